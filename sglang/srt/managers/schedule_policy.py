"""Which requests run next, and the ForwardBatch that runs them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from sglang.srt.base_types import ForwardMode
from sglang.srt.layers.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.mem_cache.cache_manager import KVCacheManager


@dataclass
class ScheduledBatch:
    mode: ForwardMode
    reqs: list["Req"]
    extend_lens: list[int]
    # per request: does this pass end its prompt (so it samples a token)?
    samples: list[bool]
    # per request: (first logits row, first position, end position) of its input-logprob
    # rows, or None
    logprob_rows: list[tuple[int, int, int] | None] = field(default_factory=list)
    forward: ForwardBatch | None = None


def _input_logprob_positions(req: "Req", start: int, end: int) -> tuple[int, int] | None:
    """Positions p in [start, end) whose logits give input logprobs (of token p + 1)."""
    if not req.wants_input_logprobs:
        return None
    lo = max(start, req.logprob_start_len - 1, 0)
    hi = min(end, len(req.origin_input_ids) - 1)
    return (lo, hi) if hi > lo else None


def plan_extend(
    cache: "KVCacheManager",
    waiting: list["Req"],
    chunk_size: int,
    max_new_reqs: int,
    reserve_pages: int,
    max_prefill_tokens: int = 1 << 62,
) -> tuple[list["Req"], list[int]]:
    """Admit waiting requests FCFS into one extend pass of at most ``chunk_size`` new tokens.

    Admitted requests get their pages; a request whose prompt does not fit the budget runs a
    page-aligned chunk now and the rest later. As SGLang's PrefillAdder, the pass's new tokens
    also stay within ``max_prefill_tokens``: a request whose remaining prompt does not fit what
    is left of it waits for the next pass, except the first of the pass, which is admitted
    alone (up to ``chunk_size``) so that a longer prompt is still served. Returns the requests
    and their extend lengths; admitted requests are removed from ``waiting``.
    """
    ps = cache.page_size
    reqs, lens, budget, input_budget = [], [], chunk_size, max_prefill_tokens
    while waiting and budget > 0 and input_budget > 0 and len(reqs) < max_new_reqs:
        req = waiting[0]
        if req.req_pool_idx is None and not req.pages:
            cap = len(req.fill_ids) - 1
            if req.wants_input_logprobs:
                cap = min(cap, max(req.logprob_start_len - 1, 0))
            cache.match_prefix(req, cap)
            if not req.admitted_once:
                req.cached_tokens = req.kv_len
        remaining = req.seq_len - req.kv_len
        if reqs and remaining > input_budget:
            break
        take = min(remaining, budget)
        if take < remaining:
            aligned = (req.kv_len + take) // ps * ps - req.kv_len
            if aligned <= 0:
                break
            take = aligned
        need = cache.pages_for(req.kv_len + take) - len(req.pages)
        if need > cache.available_pages - reserve_pages or not cache.grow(req, req.kv_len + take):
            break
        waiting.pop(0)
        req.admitted_once = True
        reqs.append(req)
        lens.append(take)
        budget -= take
        input_budget -= take
    return reqs, lens


def build_extend(cache: "KVCacheManager", reqs: list["Req"], lens: list[int]) -> ScheduledBatch:
    table = cache.req_to_token
    ids, pos, locs, kv, seq_lens, rows, samples, lp_rows = [], [], [], [], [], [], [], []
    offset = 0
    for req, n in zip(reqs, lens):
        start, end = req.kv_len, req.kv_len + n
        fill = req.fill_ids
        ids.extend(fill[start:end])
        pos.append(torch.arange(start, end, dtype=torch.int64))
        kv_idx = table.read(req.req_pool_idx, end)
        locs.append(kv_idx[start:end])
        kv.append(kv_idx)
        seq_lens.append(end)
        lp = _input_logprob_positions(req, start, end)
        if lp is not None:
            lp_rows.append((len(rows), lp[0], lp[1]))
            rows.extend(range(offset + lp[0] - start, offset + lp[1] - start))
        else:
            lp_rows.append(None)
        sample = end == req.seq_len
        samples.append(sample)
        if sample:
            rows.append(offset + n - 1)
        offset += n
    fb = ForwardBatch(
        mode=ForwardMode.EXTEND,
        input_ids=torch.tensor(ids, dtype=torch.int64),
        positions=torch.cat(pos),
        out_cache_loc=torch.cat(locs),
        seq_lens=seq_lens,
        extend_lens=list(lens),
        kv_indices=kv,
        logits_indices=torch.tensor(rows, dtype=torch.int64),
    )
    return ScheduledBatch(ForwardMode.EXTEND, reqs, list(lens), samples, lp_rows, fb)


def build_decode(cache: "KVCacheManager", reqs: list["Req"]) -> ScheduledBatch:
    table = cache.req_to_token
    seq_lens = [r.seq_len for r in reqs]
    kv = [table.read(r.req_pool_idx, n) for r, n in zip(reqs, seq_lens)]
    fb = ForwardBatch(
        mode=ForwardMode.DECODE,
        input_ids=torch.tensor([r.fill_ids[-1] for r in reqs], dtype=torch.int64),
        positions=torch.tensor([n - 1 for n in seq_lens], dtype=torch.int64),
        out_cache_loc=torch.stack([k[-1] for k in kv]),
        seq_lens=seq_lens,
        extend_lens=[1] * len(reqs),
        kv_indices=kv,
        logits_indices=torch.arange(len(reqs), dtype=torch.int64),
    )
    n = len(reqs)
    return ScheduledBatch(ForwardMode.DECODE, reqs, [1] * n, [True] * n, [None] * n, fb)
