"""Next-token sampling (greedy, temperature, top_k, top_p, min_p) and logprobs, over a batch.

Greedy rows take the argmax of the raw logits. The other rows are filtered in one vectorised
pass and sampled by inverse CDF with one uniform draw per row from that row's generator, so a
request seeded with ``SamplingParams.seed`` draws the same tokens whatever batch it is in.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.layers import cpu_kernels
from sglang.srt.sampling.sampling_params import SamplingParams


def make_generator(
    seed: Optional[int], device: str | torch.device = "cpu"
) -> Optional[torch.Generator]:
    """The per-request generator for ``SamplingParams.seed`` (None: use the global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed))


def _uniforms(
    rows: list[int], generators: list[Optional[torch.Generator]], device: torch.device
) -> torch.Tensor:
    """One U[0, 1) draw per row: from the row's generator, else from the global RNG."""
    gens = [generators[i] for i in rows]
    if all(g is None for g in gens):
        return torch.rand(len(rows), device=device)
    draws = [
        torch.rand(1) if g is None else torch.rand(1, generator=g, device=g.device) for g in gens
    ]
    return torch.cat([d.to(device) for d in draws])


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
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[Optional[torch.Generator]],
) -> torch.Tensor:
    """[B] int64 next-token ids for ``logits`` [B, vocab]."""
    next_ids = _argmax(logits)
    rows = [i for i, p in enumerate(params) if not p.is_greedy]
    if not rows:
        return next_ids
    dev = logits.device
    sub = logits if len(rows) == len(params) else logits[torch.tensor(rows, device=dev)]
    ps = [params[i] for i in rows]
    temps = torch.tensor([p.temperature for p in ps], dtype=torch.float32, device=dev)
    probs = torch.softmax(sub.float() / temps[:, None], dim=-1)
    u = _uniforms(rows, generators, dev)

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
