"""sample(), the (seed, position)-keyed draws, mask_tokens() and logprobs_of()."""

from __future__ import annotations

import torch

from sglang.srt.layers.sampler import logprobs_of, mask_tokens, sample, seeded_uniform
from sglang.srt.sampling.sampling_params import SamplingParams as SP

V = 1000


def _logits(b: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax():
    logits = _logits(8)
    out = sample(logits, [SP(temperature=0.0)] * 8, [0] * 8)
    assert out.dtype == torch.int64 and torch.equal(out, logits.argmax(-1))
    # top_k=1 is greedy whatever the temperature
    assert torch.equal(sample(logits, [SP(temperature=1.5, top_k=1)] * 8, [0] * 8), out)


def test_tiny_top_p_is_greedy():
    logits = _logits(16, seed=1)
    out = sample(logits, [SP(temperature=1.0, top_p=1e-6)] * 16, [0] * 16)
    assert torch.equal(out, logits.argmax(-1))
    out = sample(logits, [SP(temperature=1.0, top_p=1e-6, top_k=50)] * 16, [0] * 16)
    assert torch.equal(out, logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_batch_independent():
    logits = _logits(4, seed=2)
    params = [SP(temperature=1.0, seed=s) for s in (11, 12, 13, 14)]

    def run(rows: list[int], steps: int = 20) -> torch.Tensor:
        ps = [params[i] for i in rows]
        return torch.stack([sample(logits[rows], ps, [step] * len(rows)) for step in range(steps)])

    a, b = run([0, 1, 2, 3]), run([0, 1, 2, 3])
    assert torch.equal(a, b)
    assert len(set(a[:, 0].tolist())) > 1  # it does sample, not argmax
    # The same request alone (or in another batch) draws the same tokens.
    assert torch.equal(run([2])[:, 0], a[:, 2])
    assert torch.equal(run([3, 1])[:, 1], a[:, 1])
    # ... and beside unseeded rows, whatever the global RNG holds.
    mixed = [SP(temperature=1.0), params[1], SP(temperature=0.7)]
    for step in range(20):
        torch.manual_seed(step)
        assert sample(logits[[0, 1, 3]], mixed, [5, step, 9])[1] == a[step, 1]


def test_seeded_draw_is_a_function_of_seed_and_position():
    draws = {(s, p): seeded_uniform(s, p) for s in (0, 1, 7, -3, 2**63 + 5) for p in range(64)}
    assert all(seeded_uniform(s, p) == u for (s, p), u in draws.items())  # same key, same draw
    assert all(0.0 <= u < 1.0 for u in draws.values())
    # Different positions (and different seeds) give different draws.
    for s in (0, 1, 7):
        assert len({draws[(s, p)] for p in range(64)}) == 64
    assert len({draws[(s, 3)] for s in (0, 1, 7, -3, 2**63 + 5)}) == 5
    # The draw is exact in float32 (24 bits), so a float32 tensor keeps it below 1.
    u = torch.tensor([seeded_uniform(9, p) for p in range(1000)], dtype=torch.float32)
    assert (u < 1.0).all() and torch.equal(u.double(), torch.tensor(
        [seeded_uniform(9, p) for p in range(1000)], dtype=torch.float64))


def test_seeded_draws_are_roughly_uniform():
    n = 20000
    u = torch.tensor([seeded_uniform(1234, p) for p in range(n)], dtype=torch.float64)
    hist = torch.histc(u, bins=10, min=0.0, max=1.0) / n
    # 10 bins of 2000 expected: a binomial sd of 0.0021, the bound is over 7 sd.
    assert (hist - 0.1).abs().max() < 0.015
    assert abs(float(u.mean()) - 0.5) < 0.01
    # Consecutive positions are not correlated, nor are neighbouring seeds at one position.
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.05
    v = torch.tensor([seeded_uniform(s, 0) for s in range(n)], dtype=torch.float64)
    assert abs(float(v.mean()) - 0.5) < 0.01
    # Sampling a known distribution by seed over positions matches it.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = SP(temperature=1.0, seed=77)
    toks = torch.tensor([int(sample(logits, [p], [pos])[0]) for pos in range(4000)])
    f = torch.bincount(toks, minlength=4).float() / 4000
    assert torch.allclose(f, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.04)


def test_mask_tokens_bans_per_row_greedy_and_sampled():
    logits = _logits(3, seed=5)
    top = logits.argmax(-1)
    banned = [[int(top[0])], [], [int(top[2]), 3, V + 10]]  # an id past the vocab is ignored
    masked = mask_tokens(logits, banned)
    assert torch.isneginf(masked[0, top[0]]) and torch.isneginf(masked[2, [top[2], 3]]).all()
    assert torch.equal(masked[1], logits[1])
    assert int(torch.isneginf(masked).sum()) == 3
    greedy = sample(masked, [SP(temperature=0.0)] * 3, [0] * 3)
    assert greedy[0] != top[0] and greedy[1] == top[1] and greedy[2] != top[2]
    # Sampled rows never draw a banned token, even when it holds almost all the mass.
    peaked = torch.full((1, V), -20.0)
    peaked[0, 7] = 20.0
    peaked = mask_tokens(peaked, [[7]])
    for pos in range(200):
        assert sample(peaked, [SP(temperature=1.0, seed=pos)], [pos])[0] != 7
    assert mask_tokens(logits, [[], [], []]) is logits  # nothing banned: no copy
    with torch.inference_mode():  # the model's logits are inference tensors
        inf_logits = logits.clone()
    assert torch.equal(mask_tokens(inf_logits, banned), masked)


def test_sampling_distribution_and_filters():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(4000, 1)
    n = logits.shape[0]

    def freq(**kw) -> torch.Tensor:
        out = sample(logits, [SP(**kw)] * n, [0] * n)
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
    out = sample(logits, params, [0] * 6)
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


def _req(sp: SP, n_in: int = 4):
    from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
    from sglang.srt.managers.req import Req

    return Req(TokenizedGenerateReqInput("r", list(range(1, n_in + 1)), sp), 1024)


class _Tok:
    """decode() of ids as letters: the stop-string check needs only that."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_min_new_tokens_masks_and_defers_stops():
    from sglang.srt.managers.output_processor import OutputProcessor
    from sglang.srt.managers.schedule_policy import ScheduledBatch
    from sglang.srt.model_executor.forward_batch import ForwardMode

    eos, stop_id = 2, 5
    out = OutputProcessor(_Tok(), {eos, 0})
    sps = [SP(temperature=0.0, max_new_tokens=6, min_new_tokens=3, stop_token_ids=[stop_id]),
           SP(temperature=1.0, seed=3, max_new_tokens=6, min_new_tokens=3),
           SP(temperature=0.0, max_new_tokens=6)]
    reqs = [_req(sp) for sp in sps]
    logits = torch.full((3, 30), -5.0)
    logits[:, eos] = 9.0  # EOS is by far the most likely, then the stop token, then 7
    logits[:, stop_id] = 8.0
    logits[:, 7] = 1.0
    batch = ScheduledBatch(ForwardMode.DECODE, reqs, [1] * 3, [True] * 3, [None] * 3)
    out.process(batch, logits)
    # Below min_new_tokens: EOS and the stop_token_ids are masked (greedy and sampled rows); a
    # request without min_new_tokens takes EOS and stops.
    assert reqs[0].output_ids == [7] and reqs[1].output_ids[0] not in (0, eos)
    assert reqs[2].output_ids == [eos] and reqs[2].finished_reason["type"] == "stop"
    assert out._banned(reqs[0]) == [0, eos, stop_id] and out._banned(reqs[1]) == [0, eos]
    # A stop token appended below min_new_tokens (as a decode server appends the prefill's
    # first token) does not finish it; at min_new_tokens it does.
    r = _req(SP(temperature=0.0, max_new_tokens=6, min_new_tokens=2, stop=["f"]))
    out.append_token(r, eos)
    assert not r.finished
    out.append_token(r, 5)  # decodes to "f", the stop string, at min_new_tokens: it stops
    assert r.finished_reason == {"type": "stop", "matched": "f"}
    assert out._banned(r) == []
    # A stop string inside the first min_new_tokens is not checked.
    r = _req(SP(temperature=0.0, max_new_tokens=6, min_new_tokens=3, stop=["f"]))
    out.append_token(r, 5)
    out.append_token(r, 1)
    assert not r.finished
    # max_new_tokens == min_new_tokens: finished by length.
    r = _req(SP(temperature=0.0, max_new_tokens=2, min_new_tokens=2))
    out.append_token(r, eos)
    assert not r.finished
    out.append_token(r, 9)
    assert r.finished_reason == {"type": "length", "length": 2}


def test_min_new_tokens_validation():
    import pytest

    from sglang.srt.sampling.sampling_params import SamplingParamsError

    assert SP.from_dict({"max_new_tokens": 4, "min_new_tokens": 4}).min_new_tokens == 4
    for bad in ({"max_new_tokens": 4, "min_new_tokens": 5}, {"min_new_tokens": -1},
                {"min_new_tokens": 2.0}, {"min_new_tokens": True}):
        with pytest.raises(SamplingParamsError, match="min_new_tokens"):
            SP.from_dict(bad)
    assert SP.from_dict({"sampling_seed": 5}).seed == 5
