"""SGLang launch flags this project does not implement: refused by name, never ignored.

`python -m sglang.launch_server` checks the command line against this list before argparse
does, so a user who copies an SGLang command gets a message naming the flag, saying it is not
implemented here and what to do, and exit code 2 (argparse's usage-error code). A flag that is
neither implemented nor listed keeps argparse's own "unrecognized arguments" error.
"""

from __future__ import annotations

from typing import Optional

_SCALE_OUT = ("DP attention is not implemented: use --dp-size N (whole replicas behind one server) "
              "or one server per replica behind sglang-router or mini_lb")
_CPU_GRAPH = "this engine runs eagerly (no CUDA graphs, no torch.compile)"

# flag -> what to do instead (the generic advice, "drop it", is always given)
UNSUPPORTED_FLAGS: dict[str, str] = {
    # parallelism
    "--pp-size": "pipeline parallelism is not implemented",
    "--pipeline-parallel-size": "pipeline parallelism is not implemented",
    "--ep-size": "expert parallelism is not implemented",
    "--expert-parallel-size": "expert parallelism is not implemented",
    "--enable-dp-attention": _SCALE_OUT,
    "--enable-dp-lm-head": _SCALE_OUT,
    "--moe-a2a-backend": "expert parallelism is not implemented",
    "--enable-eplb": "expert parallelism is not implemented",
    "--enable-two-batch-overlap": "two-batch overlap is not implemented",
    # kernels and graphs
    "--enable-torch-compile": _CPU_GRAPH,
    "--torch-compile-max-bs": _CPU_GRAPH,
    "--cuda-graph-max-bs": _CPU_GRAPH,
    "--cuda-graph-bs": _CPU_GRAPH,
    "--disable-cuda-graph": _CPU_GRAPH + "; nothing to disable",
    "--disable-cuda-graph-padding": _CPU_GRAPH,
    "--attention-backend": "the attention backend is chosen per device (C kernels or torch)",
    "--prefill-attention-backend": "the attention backend is chosen per device",
    "--decode-attention-backend": "the attention backend is chosen per device",
    "--sampling-backend": "sampling runs in torch",
    "--disable-overlap-schedule": "the scheduler does not overlap; nothing to disable",
    "--enable-mixed-chunk": "chunked prefill and decode run as separate passes",
    "--enable-deterministic-inference": "greedy output is deterministic already",
    # models and weights
    "--quantization": "weights load as stored (--dtype picks float32/bfloat16/float16)",
    "--json-model-override-args": "model overrides are not implemented",
    "--tokenizer-mode": "the Hugging Face tokenizer is always used",
    "--skip-tokenizer-init": "the server always tokenizes",
    "--is-embedding": "embedding models are not implemented",
    "--enable-lora": "LoRA adapters are not implemented",
    "--lora-paths": "LoRA adapters are not implemented",
    "--max-loras-per-batch": "LoRA adapters are not implemented",
    "--speculative-algorithm": "speculative decoding is not implemented",
    "--speculative-draft-model-path": "speculative decoding is not implemented",
    "--speculative-num-steps": "speculative decoding is not implemented",
    "--speculative-eagle-topk": "speculative decoding is not implemented",
    "--speculative-num-draft-tokens": "speculative decoding is not implemented",
    # scheduling and caching
    "--schedule-conservativeness": "the scheduler reserves one page per running request",
    "--enable-hierarchical-cache": "the prefix cache lives in the KV pool only",
    "--hicache-ratio": "the prefix cache lives in the KV pool only",
    "--disaggregation-decode-enable-radix-cache": "a decode server keeps no prefix cache",
    "--enable-memory-saver": "memory release/resume is not implemented",
    # front end
    "--grammar-backend": "constrained decoding is not implemented",
    "--tool-call-parser": "tool calls are not implemented",
    "--reasoning-parser": "reasoning parsers are not implemented",
    "--completion-template": "completion templates are not implemented",
    "--tokenizer-worker-num": "one tokenizer process per server",
    "--admin-api-key": "use --api-key (one key for every route)",
    "--decode-log-interval": "decode progress is not logged periodically",
    "--enable-trace": "tracing is not implemented",
}


def refused_flag(argv: list[str]) -> Optional[str]:
    """The message for the first unimplemented SGLang flag in ``argv``, or None."""
    for tok in argv:
        if not tok.startswith("--"):
            continue
        name = tok.split("=", 1)[0]
        hint = UNSUPPORTED_FLAGS.get(name)
        if hint is not None:
            return (
                f"{name} is an SGLang flag that this project does not implement ({hint}); "
                f"drop {name} from the command line"
            )
    return None
