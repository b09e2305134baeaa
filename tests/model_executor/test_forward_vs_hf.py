"""Paged-KV forward passes against HF transformers under teacher forcing (float32).

Tolerance: max |logit difference| <= 1e-4 (logits are O(1): std ~0.7, max ~3).
"""

from __future__ import annotations

import pytest
import torch
from me_helpers import PagedDriver, build_hf_model, hf_logits, max_diff, rand_tokens, save_and_load

TOL = 1e-4
ARCHS = ["llama", "mistral", "qwen2", "qwen3"]


@pytest.fixture(scope="module", params=ARCHS)
def arch_models(request, tmp_path_factory):
    model = build_hf_model(request.param)
    runner = save_and_load(model, tmp_path_factory.mktemp(request.param))
    return model, runner


@pytest.mark.parametrize("page_size", [1, 16])
def test_single_and_batched_prompts(arch_models, page_size):
    hf, runner = arch_models
    d = PagedDriver(runner, page_size)
    prompts = [rand_tokens(n, seed=n) for n in (1, 7, 23, 40)]
    (single,) = d.extend([("solo", prompts[2])])
    assert max_diff(single, hf_logits(hf, prompts[2])) <= TOL
    outs = d.extend([(f"r{i}", p) for i, p in enumerate(prompts)])
    for p, out in zip(prompts, outs):
        assert out.shape == (len(p), hf.config.vocab_size)
        assert max_diff(out, hf_logits(hf, p)) <= TOL
    # Runs of equal-length prompts go through attention as one batched call.
    same = [rand_tokens(n, seed=100 + i) for i, n in enumerate((7, 7, 7, 12, 12, 7))]
    outs = d.extend([(f"s{i}", p) for i, p in enumerate(same)])
    for p, out in zip(same, outs):
        assert max_diff(out, hf_logits(hf, p)) <= TOL


@pytest.mark.parametrize("page_size", [1, 16])
def test_chunked_prefill_and_mixed_batch(arch_models, page_size):
    hf, runner = arch_models
    d = PagedDriver(runner, page_size)
    prompt = rand_tokens(45, seed=1)
    other = rand_tokens(9, seed=2)
    ref = hf_logits(hf, prompt)
    chunks = [prompt[:13], prompt[13:29], prompt[29:]]
    (c0,) = d.extend([("a", chunks[0])])
    # The second chunk shares its EXTEND batch with a fresh request.
    c1, o = d.extend([("a", chunks[1]), ("b", other)])
    (c2,) = d.extend([("a", chunks[2])])
    assert max_diff(torch.cat([c0, c1, c2]), ref) <= TOL
    assert max_diff(o, hf_logits(hf, other)) <= TOL


@pytest.mark.parametrize("page_size", [1, 16])
def test_prefix_cache_hit(arch_models, page_size):
    hf, runner = arch_models
    d = PagedDriver(runner, page_size)
    shared = rand_tokens(32, seed=3)
    d.extend([("first", shared + rand_tokens(5, seed=4))])
    suffix = rand_tokens(11, seed=5)
    d.share_prefix("first", "second", 32)
    (out,) = d.extend([("second", suffix)])  # only the suffix is computed
    assert max_diff(out, hf_logits(hf, shared + suffix)[32:]) <= TOL
    # A one-token extend on a cached prefix (a full cache hit re-computing the last token).
    d.share_prefix("first", "third", 32)
    (last,) = d.extend([("third", suffix[:1])])
    assert max_diff(last, hf_logits(hf, shared + suffix[:1])[32:]) <= TOL


@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_steps(arch_models, page_size):
    hf, runner = arch_models
    d = PagedDriver(runner, page_size)
    prompts = [rand_tokens(n, seed=10 + n) for n in (3, 17, 30)]
    forced = [rand_tokens(5, seed=20 + i) for i in range(3)]
    d.extend([(f"r{i}", p) for i, p in enumerate(prompts)])
    refs = [hf_logits(hf, p + f) for p, f in zip(prompts, forced)]
    for step in range(5):
        out = d.decode([(f"r{i}", forced[i][step]) for i in range(3)])
        assert out.shape == (3, hf.config.vocab_size) and out.dtype == torch.float32
        for i, p in enumerate(prompts):
            assert max_diff(out[i], refs[i][len(p) + step]) <= TOL, (step, i)
    # Same lengths everywhere (the backend skips the padding mask then).
    d2 = PagedDriver(runner, page_size, seed=1)
    d2.extend([("x", prompts[1]), ("y", prompts[1])])
    out = d2.decode([("x", forced[1][0]), ("y", forced[1][0])])
    assert max_diff(out[0], refs[1][len(prompts[1])]) <= TOL
    assert max_diff(out[1], refs[1][len(prompts[1])]) <= TOL


def test_logits_rows_default_to_last_tokens(arch_models):
    hf, runner = arch_models
    d = PagedDriver(runner, 1)
    prompts = [rand_tokens(n, seed=n) for n in (4, 9)]
    fb = d._batch(1, [(f"r{i}", p) for i, p in enumerate(prompts)], all_rows=False)
    out = runner.forward(fb)
    assert out.shape == (2, hf.config.vocab_size)
    for i, p in enumerate(prompts):
        assert max_diff(out[i], hf_logits(hf, p)[-1]) <= TOL
