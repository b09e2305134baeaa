"""The tiny forward on a CUDA device (skipped without one)."""

from __future__ import annotations

import pytest
import torch
from me_helpers import PagedDriver, build_hf_model, hf_logits, max_diff, rand_tokens, save_and_load

from sglang.srt.layers.sampler import sample
from sglang.srt.sampling.sampling_params import SamplingParams


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_forward_on_cuda(tmp_path, arch):
    hf = build_hf_model(arch)
    runner = save_and_load(hf, tmp_path, device="cuda")
    assert runner.model.model.embed_tokens.weight.is_cuda
    d = PagedDriver(runner, 16)
    prompts = [rand_tokens(n, seed=n) for n in (6, 21)]
    forced = rand_tokens(3, seed=99)
    outs = d.extend([("a", prompts[0][:4]), ("b", prompts[1])])
    (rest,) = d.extend([("a", prompts[0][4:])])
    ref_a = hf_logits(hf, prompts[0] + forced)
    ref_b = hf_logits(hf, prompts[1] + forced)
    # TF32 may be on for CUDA matmuls: a looser bound than the CPU tests' 1e-4.
    assert max_diff(torch.cat([outs[0], rest]), ref_a[:6]) <= 1e-2
    assert max_diff(outs[1], ref_b[:21]) <= 1e-2
    for step, tok in enumerate(forced):
        out = d.decode([("a", tok), ("b", tok)])
        assert out.is_cuda
        assert max_diff(out[0], ref_a[6 + step]) <= 1e-2
        assert max_diff(out[1], ref_b[21 + step]) <= 1e-2
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=3)]
    ids = sample(out, params, [0, 0])
    assert ids.is_cuda and ids[0] == out[0].argmax()
