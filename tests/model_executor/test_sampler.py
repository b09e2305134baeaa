"""sample() and logprobs_of()."""

from __future__ import annotations

import torch

from sglang.srt.layers.sampler import logprobs_of, make_generator, sample
from sglang.srt.sampling.sampling_params import SamplingParams as SP

V = 1000


def _logits(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = _logits(8)
    out = sample(logits, [SP(temperature=0.0)] * 8, [None] * 8)
    assert out.dtype == torch.int64 and torch.equal(out, logits.argmax(-1))
    # top_k=1 is greedy whatever the temperature
    assert torch.equal(sample(logits, [SP(temperature=1.5, top_k=1)] * 8, [None] * 8), out)


def test_tiny_top_p_is_greedy():
    logits = _logits(16, seed=1)
    out = sample(logits, [SP(temperature=1.0, top_p=1e-6)] * 16, [None] * 16)
    assert torch.equal(out, logits.argmax(-1))
    out = sample(logits, [SP(temperature=1.0, top_p=1e-6, top_k=50)] * 16, [None] * 16)
    assert torch.equal(out, logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_batch_independent():
    logits = _logits(4, seed=2)
    params = [SP(temperature=1.0, seed=s) for s in (11, 12, 13, 14)]

    def run(rows: list[int], steps: int = 20) -> torch.Tensor:
        gens = [make_generator(params[i].seed) for i in rows]
        ps = [params[i] for i in rows]
        return torch.stack([sample(logits[rows], ps, gens) for _ in range(steps)])

    a, b = run([0, 1, 2, 3]), run([0, 1, 2, 3])
    assert torch.equal(a, b)
    assert len(set(a[:, 0].tolist())) > 1  # it does sample, not argmax
    # The same request alone (or in another batch) draws the same tokens.
    assert torch.equal(run([2])[:, 0], a[:, 2])
    assert torch.equal(run([3, 1])[:, 1], a[:, 1])


def test_sampling_distribution_and_filters():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    n = logits.shape[0]

    def freq(**kw) -> torch.Tensor:
        out = sample(logits, [SP(**kw)] * n, [None] * n)
        return torch.bincount(out, minlength=4).float() / n

    f = freq(temperature=1.0)
    assert torch.allclose(f, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    assert freq(temperature=1.0, top_k=2)[2:].sum() == 0
    assert freq(temperature=1.0, top_p=0.7)[2:].sum() == 0  # 0.5 + 0.3 covers 0.7
    f = freq(temperature=1.0, min_p=0.35)  # keeps p >= 0.175: tokens 0 and 1
    assert f[2:].sum() == 0 and f[1] > 0.3
    assert freq(temperature=1.0, min_p=0.35, top_k=3)[2:].sum() == 0
    # Lower temperature sharpens.
    assert freq(temperature=0.3)[0] > 0.8


def test_mixed_batch_greedy_and_sampled():
    logits = _logits(6, seed=3)
    params = [SP(temperature=0.0), SP(temperature=1.0, seed=1), SP(top_k=1)] * 2
    gens = [make_generator(p.seed) for p in params]
    out = sample(logits, params, gens)
    for i in (0, 2, 3, 5):
        assert out[i] == logits[i].argmax()
    assert ((out >= 0) & (out < V)).all()


def test_logprobs_of():
    logits = _logits(3, seed=4)
    ids = torch.tensor([5, 17, 999])
    chosen, tops = logprobs_of(logits, ids, top_k=4)
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(torch.tensor(chosen), ref[torch.arange(3), ids], atol=1e-6)
    for row, top in enumerate(tops):
        assert len(top) == 4 and top[0][1] == int(logits[row].argmax())
        assert [lp for lp, _ in top] == sorted((lp for lp, _ in top), reverse=True)
        assert abs(top[0][0] - float(ref[row].max())) < 1e-6
    chosen, tops = logprobs_of(logits, ids, top_k=0)
    assert tops == [[], [], []] and len(chosen) == 3
