"""Next-token sampling (greedy, temperature, top_k, top_p, min_p) and logprobs, over a batch.

Greedy rows take the argmax of the raw logits. The other rows are filtered in one vectorised
pass and sampled by inverse CDF with one uniform draw per row. A request seeded with
``SamplingParams.seed`` draws a pure function of (seed, output position), so it gets the same
tokens whatever batch it is in, and through PD as on a unified server; unseeded rows draw from
the global RNG.
"""

from __future__ import annotations

import torch

from sglang.srt.layers import cpu_kernels
from sglang.srt.sampling.sampling_params import SamplingParams


_MASK64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijective, well-mixed map of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def seeded_uniform(seed: int, position: int) -> float:
    """The U[0, 1) draw of a request seeded with ``seed`` for its output token ``position``.

    A pure function of (seed, position), so the draw is the same whatever batch the request is
    in, and a PD decode server draws for token 2 what a unified server would without any RNG
    state crossing from the prefill. 24 bits, so the value is exact in float32 and below 1.
    """
    h = _mix64((_mix64(int(seed) & _MASK64) + int(position)) & _MASK64)
    return (h >> 40) * 2.0**-24


def _uniforms(
    params: list[SamplingParams], positions: list[int], device: torch.device
) -> torch.Tensor:
    """One U[0, 1) draw per row: keyed by (seed, position) when seeded, else the global RNG."""
    if all(p.seed is None for p in params):
        return torch.rand(len(params), device=device)
    u = torch.rand(len(params))
    for i, (p, pos) in enumerate(zip(params, positions)):
        if p.seed is not None:
            u[i] = seeded_uniform(p.seed, pos)
    return u.to(device)


def mask_tokens(logits: torch.Tensor, banned: list[list[int]]) -> torch.Tensor:
    """``logits`` with ``-inf`` at each token t of ``banned[i]`` in row i (e.g. EOS while fewer
    than ``min_new_tokens`` tokens are out); a new tensor, the input is left as it is."""
    rows = [i for i, b in enumerate(banned) for _ in b]
    if not rows:
        return logits
    cols = [t for b in banned for t in b]
    r = torch.tensor(rows, dtype=torch.int64, device=logits.device)
    c = torch.tensor(cols, dtype=torch.int64, device=logits.device)
    keep = c < logits.shape[-1]  # a stop_token_id past the vocabulary can never be sampled
    ninf = torch.tensor(float("-inf"), dtype=logits.dtype, device=logits.device)
    return logits.index_put((r[keep], c[keep]), ninf)


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Column drawn from each row of un-normalised, non-negative ``probs`` for uniforms ``u``."""
    cdf = probs.cumsum(-1)
    target = u[:, None] * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).squeeze(1)
    # u * total can round up to the total itself: fall back to the most likely column.
    return torch.where(pos < probs.shape[-1], pos, probs.argmax(-1))


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.stride(-1) == 1:
        if (k := cpu_kernels.get()) is not None:
            return k.argmax(logits)
    return torch.argmax(logits, dim=-1)


def sample(
    logits: torch.Tensor, params: list[SamplingParams], positions: list[int]
) -> torch.Tensor:
    """[B] int64 next-token ids for ``logits`` [B, vocab]; ``positions[i]`` is the index of
    row i's token among its request's output tokens (the key of a seeded draw)."""
    next_ids = _argmax(logits)
    rows = [i for i, p in enumerate(params) if not p.is_greedy]
    if not rows:
        return next_ids
    dev = logits.device
    sub = logits if len(rows) == len(params) else logits[torch.tensor(rows, device=dev)]
    ps = [params[i] for i in rows]
    temps = torch.tensor([p.temperature for p in ps], dtype=torch.float32, device=dev)
    probs = torch.softmax(sub.float() / temps[:, None], dim=-1)
    u = _uniforms(ps, [positions[i] for i in rows], dev)

    top_ks = [p.top_k if p.top_k > 0 else probs.shape[-1] for p in ps]
    need_top_p = any(p.top_p < 1.0 for p in ps)
    need_min_p = any(p.min_p > 0.0 for p in ps)
    if need_top_p or any(p.top_k > 0 for p in ps):
        # Work on the candidates in descending order: a partial top-k when every row has one.
        k_max = max(top_ks)
        if k_max < probs.shape[-1]:
            vals, idx = probs.topk(k_max, dim=-1)
        else:
            vals, idx = probs.sort(dim=-1, descending=True)
        col = torch.arange(vals.shape[-1], device=dev)[None, :]
        drop = col >= torch.tensor(top_ks, device=dev)[:, None]
        if need_top_p:
            top_ps = torch.tensor([p.top_p for p in ps], dtype=torch.float32, device=dev)
            drop |= (vals.cumsum(-1) - vals) > top_ps[:, None]
        if need_min_p:
            min_ps = torch.tensor([p.min_p for p in ps], dtype=torch.float32, device=dev)
            drop |= vals < (vals[:, :1] * min_ps[:, None])
        vals = vals.masked_fill(drop, 0.0)
        chosen = idx.gather(1, _inverse_cdf(vals, u)[:, None]).squeeze(1)
    else:
        if need_min_p:
            min_ps = torch.tensor([p.min_p for p in ps], dtype=torch.float32, device=dev)
            thresh = probs.max(dim=-1, keepdim=True).values * min_ps[:, None]
            probs = probs.masked_fill(probs < thresh, 0.0)
        chosen = _inverse_cdf(probs, u)
    if len(rows) == len(params):
        return chosen
    next_ids[torch.tensor(rows, device=dev)] = chosen
    return next_ids


def logprobs_of(
    logits: torch.Tensor, token_ids: torch.Tensor, top_k: int
) -> tuple[list[float], list[list[tuple[float, int]]]]:
    """log_softmax of the raw logits: the logprob of ``token_ids[i]`` in row i, and the
    ``top_k`` most likely (logprob, token id) of each row."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    ids = token_ids.to(device=lp.device, dtype=torch.int64).view(-1, 1)
    chosen = lp.gather(1, ids).squeeze(1).tolist()
    if top_k <= 0:
        return chosen, [[] for _ in chosen]
    vals, idx = lp.topk(min(top_k, lp.shape[-1]), dim=-1)
    tops = [list(zip(v, i)) for v, i in zip(vals.tolist(), idx.tolist())]
    return chosen, tops
