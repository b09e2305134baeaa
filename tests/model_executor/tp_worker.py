"""The TP forward test's script and its rank processes: the same paged-KV scenario (a batch of
prompts, chunked prefill mixed with a new request, a prefix hit, decode steps) run by a tp=1
runner in the test process and by each rank of a gloo group of 2 spawned processes. A model is
given as (directory, dtype)."""

from __future__ import annotations

import torch
from me_helpers import PagedDriver, rand_tokens

from sglang.srt.model_executor.model_config import ModelConfig
from sglang.srt.model_executor.model_runner import ModelRunner


def scenario(runner: ModelRunner, page_size: int, vocab: int) -> list[torch.Tensor]:
    """Every logits tensor of the scenario, in order."""
    d = PagedDriver(runner, page_size)
    tok = lambda n, seed: rand_tokens(n, seed, vocab)  # noqa: E731
    out = []
    prompts = [tok(n, seed=n) for n in (1, 7, 23, 40)]
    out += d.extend([(f"r{i}", p) for i, p in enumerate(prompts)])
    long = tok(45, seed=1)
    out += d.extend([("a", long[:13])])
    out += d.extend([("a", long[13:29]), ("b", tok(9, seed=2))])  # chunk + a new request
    out += d.extend([("a", long[29:])])
    shared = 16 if page_size <= 16 else page_size
    d.share_prefix("a", "hit", shared)
    out += d.extend([("hit", tok(11, seed=5))])  # only the suffix is computed
    for step in range(3):
        out.append(d.decode([(f"r{i}", tok(1, seed=30 + 4 * step + i)[0]) for i in range(4)]))
    return out


def reference(models: list[tuple[str, str]], page_size: int) -> list[list[torch.Tensor]]:
    return [scenario(load_runner(*m), page_size, _vocab(m[0])) for m in models]


def load_runner(path: str, dtype: str) -> ModelRunner:
    return ModelRunner(ModelConfig.from_pretrained(path, dtype), device="cpu")


def packed_linears(runner: ModelRunner) -> bool:
    """Whether the CPU bf16 pre-packing applied (to the row-parallel layers too)."""
    attn = runner.model.model.layers[0].self_attn
    return attn.qkv_proj.packed is not None and attn.o_proj.packed is not None


def _vocab(path: str) -> int:
    return ModelConfig.from_pretrained(path).vocab_size


def rank_main(rank: int, world: int, init_method: str, models: list[tuple[str, str]],
              page_size: int, out_dir: str) -> None:
    """One TP rank (torch.multiprocessing.spawn target): saves its logits and KV pool shape."""
    from sglang.srt.distributed import destroy_tp_group, init_tp_group

    torch.set_num_threads(1)
    init_tp_group(rank, world, init_method, "cpu", timeout_s=120)
    try:
        results = []
        for path, dtype in models:
            runner = load_runner(path, dtype)
            logits = scenario(runner, page_size, _vocab(path))
            lay = runner.kv_pool.layout
            results.append({"logits": logits, "kv_heads": lay.num_kv_heads,
                            "q_heads": runner.attn_backend.num_heads,
                            "packed": packed_linears(runner)})
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        destroy_tp_group()
