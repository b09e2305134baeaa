"""Command line of ``python -m sglang.bench_serving``: SGLang 0.5's flags, names and defaults
(plus ``--goodput``), and ``make_args(**overrides)`` to build the same ``Namespace`` from code."""

from __future__ import annotations

import argparse
from typing import Any

BACKENDS = ("sglang", "sglang-native", "sglang-oai", "sglang-oai-chat")
DATASETS = ("sharegpt", "random", "random-ids", "generated-shared-prefix")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sglang.bench_serving",
                                description="Benchmark the online serving throughput.")
    a = p.add_argument
    a("--backend", type=str, choices=BACKENDS, default="sglang",
      help="sglang/sglang-native: POST /generate; sglang-oai: /v1/completions; "
           "sglang-oai-chat: /v1/chat/completions.")
    a("--base-url", type=str, default=None, help="Server or API base url (else --host/--port).")
    a("--host", type=str, default="0.0.0.0", help="Default host is 0.0.0.0.")
    a("--port", type=int, default=None, help="Default 30000.")
    a("--dataset-name", type=str, default="sharegpt", choices=DATASETS,
      help="Name of the dataset to benchmark on.")
    a("--dataset-path", type=str, default="", help="Path to the dataset (ShareGPT JSON).")
    a("--model", type=str, default=None,
      help="Model name sent in OpenAI requests. Default: the first id of GET /v1/models.")
    a("--tokenizer", type=str, default=None,
      help="Tokenizer path. Default: the server's GET /model_info model_path.")
    a("--num-prompts", type=int, default=1000, help="Number of prompts to process.")
    a("--sharegpt-output-len", type=int, default=None,
      help="Output length for each request, overriding the ShareGPT completion's length.")
    a("--sharegpt-context-len", type=int, default=None,
      help="Drop ShareGPT requests whose prompt + output exceed this.")
    a("--random-input-len", type=int, default=1024, help="Input tokens per request (random*).")
    a("--random-output-len", type=int, default=1024, help="Output tokens per request (random*).")
    a("--random-range-ratio", type=float, default=0.0,
      help="Lengths are drawn uniformly from [len * ratio, len].")
    a("--request-rate", type=float, default=float("inf"),
      help="Requests per second (Poisson arrivals); inf sends all at time 0.")
    a("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    a("--output-file", type=str, default=None, help="Output JSONL file name (appended).")
    a("--output-details", action="store_true", help="Add per-request arrays to the JSONL line.")
    a("--disable-tqdm", action="store_true", help="No progress bar.")
    a("--disable-stream", action="store_true", help="Disable streaming mode.")
    a("--return-logprob", action="store_true", help="Return logprob (native backend).")
    a("--seed", type=int, default=1, help="The random seed.")
    a("--disable-ignore-eos", action="store_true", help="Disable ignoring EOS.")
    a("--extra-request-body", metavar='{"key1": "value1"}', type=str, default=None,
      help="JSON object merged into every request payload.")
    a("--apply-chat-template", action="store_true", help="Apply the chat template (sharegpt).")
    a("--profile", action="store_true", help="POST /start_profile and /stop_profile around it.")
    a("--lora-name", type=str, nargs="*", default=None, help="LoRA adapter names.")
    a("--prompt-suffix", type=str, default="",
      help="Suffix applied to the end of all user prompts, followed by 'Assistant:'.")
    a("--pd-separated", action="store_true",
      help="The URL is a PD balancer (mini_lb, sglang-router): flush through it, read the "
           "decode's server info.")
    a("--flush-cache", action="store_true", help="POST /flush_cache before the benchmark.")
    a("--warmup-requests", type=int, default=1, help="Warmup requests before the benchmark.")
    a("--tokenize-prompt", action="store_true",
      help="Send input_ids instead of text (random datasets, --backend sglang).")
    a("--goodput", nargs="+", default=None, metavar="KEY:MS",
      help="Service level objectives for goodput, e.g. ttft:500 tpot:50 e2e:3000 (ms).")
    g = p.add_argument_group("generated-shared-prefix dataset arguments")
    g.add_argument("--gsp-num-groups", type=int, default=64, help="System prompt groups.")
    g.add_argument("--gsp-prompts-per-group", type=int, default=16, help="Prompts per group.")
    g.add_argument("--gsp-system-prompt-len", type=int, default=2048,
                   help="System prompt length in tokens.")
    g.add_argument("--gsp-question-len", type=int, default=128, help="Question length in tokens.")
    g.add_argument("--gsp-output-len", type=int, default=256, help="Output length in tokens.")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        parser.error(str(e))
    return args


def make_args(**overrides: Any) -> argparse.Namespace:
    """The CLI's defaults with ``overrides`` (Python names: ``num_prompts=8``); unknown names are
    refused, so a typo cannot silently run with a default."""
    args = build_parser().parse_args([])
    unknown = sorted(k for k in overrides if not hasattr(args, k))
    if unknown:
        raise TypeError(f"unknown bench_serving argument(s): {', '.join(unknown)}")
    for k, v in overrides.items():
        setattr(args, k, v)
    check_args(args)
    return args


def check_args(args: argparse.Namespace) -> None:
    if args.backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, not {args.backend!r}")
    if args.dataset_name not in DATASETS:
        raise ValueError(f"--dataset-name must be one of {', '.join(DATASETS)}, "
                         f"not {args.dataset_name!r}")
    if args.num_prompts < 1:
        raise ValueError("--num-prompts must be at least 1")
    if not 0.0 <= args.random_range_ratio <= 1.0:
        raise ValueError("--random-range-ratio must be within [0, 1]")
    if args.request_rate <= 0:
        raise ValueError("--request-rate must be positive (inf: all at once)")
    if args.max_concurrency is not None and args.max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    if args.tokenize_prompt and args.backend not in ("sglang", "sglang-native"):
        raise ValueError("--tokenize-prompt only works with --backend sglang")
    if args.tokenize_prompt and not args.dataset_name.startswith("random"):
        raise ValueError("--tokenize-prompt only works with the random datasets")
    if args.dataset_name == "sharegpt" and not args.dataset_path:
        raise ValueError("--dataset-name sharegpt needs --dataset-path (a local ShareGPT JSON; "
                         "nothing is downloaded)")
    if args.goodput:
        from sglang.bench_serving.metrics import parse_goodput

        parse_goodput(args.goodput)
