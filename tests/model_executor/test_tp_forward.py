"""Tensor parallelism (tp=2, gloo, two spawned rank processes) gives the logits of tp=1.

fp32 tiny models of three families, chosen to cover the TP paths: Llama (2 KV heads split one per
rank), Qwen2 (q/k/v biases, tied embeddings, a vocabulary of 125 that 2 ranks split unevenly),
Qwen3 (per-head q/k norms, one KV head replicated on both ranks). The same paged-KV scenario
(batched prompts, chunked prefill mixed with a new request, a prefix hit, decode steps) runs on
the tp=1 runner here and on both ranks; every logits tensor must agree within 1e-4, and the two
ranks' logits must be identical (they sample on their own, so they must see the same numbers).
The Llama model once more in bfloat16: each rank pre-packs its shards for the CPU matmul as tp=1
does, and stays within bf16 rounding of the fp32 logits.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as tmp
from me_helpers import build_hf_model, max_diff
from tp_worker import load_runner, packed_linears, rank_main, reference

from sglang.srt.utils.network import free_port

TOL = 1e-4
BF16_TOL = 0.1  # bf16 rounding over 2 layers; tp=1 bf16 is ~0.04 from fp32 on this model
MODELS = {  # name: (arch, overrides, expected (q heads, kv heads) per rank)
    "llama": ("llama", {}, (2, 1)),
    "qwen2": ("qwen2", {"tie_word_embeddings": True, "vocab_size": 125}, (2, 1)),
    "qwen3": ("qwen3", {"num_key_value_heads": 1}, (2, 1)),
}


@pytest.fixture(scope="module")
def tp2_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp")
    models = []
    for name, (arch, overrides, _) in MODELS.items():
        path = root / name
        build_hf_model(arch, **overrides).save_pretrained(path)
        models.append((str(path), "auto"))
    models.append((models[0][0], "bfloat16"))
    init = f"tcp://127.0.0.1:{free_port()}"
    tmp.spawn(rank_main, args=(2, init, models, 4, str(root)), nprocs=2, join=True)
    ranks = [torch.load(root / f"rank{r}.pt") for r in range(2)]
    return reference(models[:-1], 4), ranks, packed_linears(load_runner(*models[-1]))


@pytest.mark.parametrize("index,name", list(enumerate(MODELS)))
def test_tp2_logits_equal_tp1(tp2_results, index, name):
    ref, ranks, _ = tp2_results
    want = ref[index]
    for rank, res in enumerate(ranks):
        got = res[index]
        assert (got["q_heads"], got["kv_heads"]) == MODELS[name][2], rank
        assert len(got["logits"]) == len(want)
        for i, (a, b) in enumerate(zip(got["logits"], want)):
            assert a.shape == b.shape, (name, rank, i)
            assert max_diff(a, b) <= TOL, (name, rank, i, max_diff(a, b))
    for a, b in zip(ranks[0][index]["logits"], ranks[1][index]["logits"]):
        assert torch.equal(a, b), name


def test_tp2_bf16_packed_shards(tp2_results):
    ref, ranks, packed_at_tp1 = tp2_results
    for res in ranks:
        got = res[len(MODELS)]
        assert got["packed"] == packed_at_tp1  # pre-packed wherever tp=1 packs
        for a, b in zip(got["logits"], ref[0]):
            assert a.dtype == torch.float32 and max_diff(a, b) <= BF16_TOL
    for a, b in zip(ranks[0][len(MODELS)]["logits"], ranks[1][len(MODELS)]["logits"]):
        assert torch.equal(a, b)
