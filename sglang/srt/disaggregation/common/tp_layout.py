"""PD between tensor-parallel ranks: which prefill rank writes which KV heads of which decode
rank, and the memory blocks of a head slice.

Every rank of either side holds the KV heads ``head_split`` gives it (SGLang's split: heads
divide over the ranks, or each rank holds one replicated head when the ranks outnumber them).
A decode rank takes each of its heads from one prefill rank holding it: among the prefill
ranks holding the head, the ``decode_rank % replicas``-th (so replicated prefill heads spread
over the decode ranks, and same-TP pairs rank d with rank d). Its consecutive heads from one
prefill rank form a ``Slice``. A prefill rank that no decode rank needs still gets a slice of
no heads from decode rank ``p % decode_tp`` (a *null source*): every prefill rank then has a
destination for every request, and its sender finishes (writing nothing) with the others.
Exactly one slice per decode rank (its first) also writes the metadata row.

Same TP, slice = all local heads on both sides: pages move as today's page runs. Otherwise each
page of each region moves as ``page_size`` blocks of ``num_heads * head_bytes`` (one per token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from sglang.srt.disaggregation.common.utils import Blocks
from sglang.srt.distributed.parallel_state import HeadSplit, head_split


@dataclass(frozen=True)
class Slice:
    """``num_heads`` KV heads from local head ``src_head`` of prefill rank ``prefill_rank``
    into local head ``dst_head`` of the decode rank (0 heads: a null source)."""

    prefill_rank: int
    src_head: int
    dst_head: int
    num_heads: int
    sends_aux: bool = False


def local_split(info: dict[str, Any]) -> HeadSplit:
    """This side's heads, from a ``local_info``/registration dict (tp fields default to 1)."""
    shape = info.get("model_shape", {})
    kv = int(shape.get("num_kv_heads", 1))
    return head_split(int(info.get("num_heads") or kv), kv, int(info.get("tp_size", 1)),
                      int(info.get("tp_rank", 0)))


def _slices(num_heads: int, num_kv_heads: int, p_tp: int, d_tp: int, d_rank: int) -> list[Slice]:
    p_splits = [head_split(num_heads, num_kv_heads, p_tp, p) for p in range(p_tp)]
    mine = head_split(num_heads, num_kv_heads, d_tp, d_rank)
    out: list[Slice] = []
    for h in range(mine.kv_start, mine.kv_start + mine.num_kv_heads):
        cands = [p for p, s in enumerate(p_splits) if s.kv_start <= h < s.kv_start + s.num_kv_heads]
        p = cands[d_rank % len(cands)]
        src, dst = h - p_splits[p].kv_start, h - mine.kv_start
        last = out[-1] if out else None
        if (last is not None and last.prefill_rank == p and last.src_head + last.num_heads == src
                and last.dst_head + last.num_heads == dst):
            out[-1] = Slice(p, last.src_head, last.dst_head, last.num_heads + 1)
        else:
            out.append(Slice(p, src, dst, 1))
    return out


def plan_sources(num_heads: int, num_kv_heads: int, p_tp: int, d_tp: int,
                 d_rank: int) -> tuple[list[Slice], dict[int, int]]:
    """Decode rank ``d_rank``'s slices (one per source prefill rank; the first writes the
    metadata row) and, for each of its source ranks, how many decode ranks that prefill rank
    serves (its number of destinations per request)."""
    plan = {d: _slices(num_heads, num_kv_heads, p_tp, d_tp, d) for d in range(d_tp)}
    used = {s.prefill_rank for ss in plan.values() for s in ss}
    for p in range(p_tp):
        if p not in used:
            plan[p % d_tp].append(Slice(p, 0, 0, 0))
    counts: dict[int, int] = {}
    for ss in plan.values():
        ranks = [s.prefill_rank for s in ss]
        assert len(ranks) == len(set(ranks)), f"two slices from one prefill rank: {ss}"
        for p in ranks:
            counts[p] = counts.get(p, 0) + 1
    mine = plan[d_rank]
    mine[0] = Slice(mine[0].prefill_rank, mine[0].src_head, mine[0].dst_head,
                    mine[0].num_heads, True)
    return mine, {s.prefill_rank: counts[s.prefill_rank] for s in mine}


def tp_problem(prefill: dict[str, Any], decode: dict[str, Any]) -> Optional[str]:
    """Why the prefill's ranks cannot fill this decode's heads, naming both values and both
    TP sizes; None if they can."""
    p_tp, d_tp = int(prefill.get("tp_size", 1)), int(decode.get("tp_size", 1))
    sizes = f"(prefill --tp-size {p_tp}, decode --tp-size {d_tp})"
    p_shape, d_shape = prefill.get("model_shape", {}), decode.get("model_shape", {})
    p_h = prefill.get("num_heads") or p_shape.get("num_kv_heads")
    d_h = decode.get("num_heads") or d_shape.get("num_kv_heads")
    if p_h != d_h:
        return (f"model shape differs (num_heads): prefill {p_h}, decode {d_h} {sizes}; serve "
                f"the same model on both (--model-path)")
    try:
        p_split = local_split(prefill)
        d_split = local_split(decode)
    except (ValueError, ZeroDivisionError, TypeError) as e:
        return f"the KV heads cannot be split over the ranks {sizes}: {e}"
    p_local = prefill.get("num_local_kv_heads", p_split.num_kv_heads)
    d_local = decode.get("num_local_kv_heads", d_split.num_kv_heads)
    if p_local != p_split.num_kv_heads or d_local != d_split.num_kv_heads:
        return (f"local KV heads differ from the TP split: prefill {p_local} (split gives "
                f"{p_split.num_kv_heads}), decode {d_local} (split gives "
                f"{d_split.num_kv_heads}) {sizes}")
    p_len, d_len = prefill.get("kv_item_len"), decode.get("kv_item_len")
    if not isinstance(p_len, int) or not isinstance(d_len, int) or p_len * d_local != d_len * p_local:
        return (f"KV page size in bytes differs: prefill {p_len} for {p_local} heads, decode "
                f"{d_len} for {d_local} heads {sizes}; serve the same model")
    return None


def slice_problem(args: Any, local: int, msg: Any) -> Optional[str]:
    """Prefill side: why a decode rank's registration (RegisterMsg) does not fit this rank's
    pages (``args``: its KVArgs, ``local``: its KV heads), or None."""
    a = args
    if len(msg.kv_ptrs) != len(a.kv_data_ptrs):
        return f"{len(msg.kv_ptrs)} KV regions != prefill {len(a.kv_data_ptrs)}"
    if list(msg.aux_item_lens) != list(a.aux_item_lens):
        return f"metadata rows {msg.aux_item_lens} != prefill {a.aux_item_lens}"
    if msg.stage_ptrs and len(msg.stage_ptrs) != len(a.kv_data_ptrs):
        return f"{len(msg.stage_ptrs)} staging regions != prefill {len(a.kv_data_ptrs)}"
    if msg.num_heads == -1:  # whole pages, same layout
        if msg.kv_item_len != a.kv_item_len:
            return f"KV page bytes {msg.kv_item_len} != prefill {a.kv_item_len}"
        return None
    sizes = f"(prefill --tp-size {a.tp_size}, decode --tp-size {msg.tp_size})"
    if not (0 <= msg.num_heads and 0 <= msg.src_head and msg.src_head + msg.num_heads <= local
            and 0 < msg.dst_num_heads and 0 <= msg.dst_head
            and msg.dst_head + msg.num_heads <= msg.dst_num_heads):
        return (f"head slice {msg.num_heads} heads from {msg.src_head} (of this rank's {local}) "
                f"into {msg.dst_head} (of the decode rank's {msg.dst_num_heads}) is out of "
                f"range {sizes}")
    if msg.kv_item_len * local != a.kv_item_len * msg.dst_num_heads:
        return (f"KV page bytes {msg.kv_item_len} for {msg.dst_num_heads} heads != prefill "
                f"{a.kv_item_len} for {local} heads {sizes}")
    return None


def source_plan(prefill: dict[str, Any], mine: dict[str, Any]) -> list[tuple[Slice, int]]:
    """Decode side: (slice, destinations of its prefill rank) per source of this decode rank;
    tp1 on both sides: one whole-pages slice (``num_heads`` -1), as before TP existed."""
    p_tp = int(prefill.get("tp_size", 1))
    if p_tp == 1 and mine.get("tp_size", 1) == 1:
        return [(Slice(0, 0, 0, -1, True), 1)]
    slices, counts = plan_sources(mine["num_heads"], mine["model_shape"]["num_kv_heads"], p_tp,
                                  mine["tp_size"], mine["tp_rank"])
    return [(sl, counts[sl.prefill_rank]) for sl in slices]


def same_layout(src_local: int, dst_local: int, num_heads: int) -> bool:
    """Whether a slice is whole pages on both sides (today's page runs apply)."""
    return num_heads == src_local == dst_local


def head_slice_blocks(src_pages: np.ndarray, dst_pages: np.ndarray, src_ptrs: Sequence[int],
                      dst_ptrs: Sequence[int], src_item_len: int, dst_item_len: int,
                      page_size: int, src_local: int, dst_local: int, src_head: int,
                      dst_head: int, num_heads: int) -> Blocks:
    """One block per (region, page, token): the slice's heads of that token, from the source
    page's layout into the destination page's (both ``[token, kv_head, head_dim]``)."""
    if len(src_ptrs) != len(dst_ptrs):
        raise ValueError(f"{len(src_ptrs)} source regions but {len(dst_ptrs)} destination ones")
    src_pages = np.asarray(src_pages, dtype=np.int64).reshape(-1)
    dst_pages = np.asarray(dst_pages, dtype=np.int64).reshape(-1)
    if src_pages.shape != dst_pages.shape:
        raise ValueError(f"{src_pages.size} source pages but {dst_pages.size} destination pages")
    if num_heads == 0 or src_pages.size == 0:
        return Blocks([], [], [])
    head_bytes = src_item_len // (page_size * src_local)
    if head_bytes * page_size * dst_local != dst_item_len:
        raise ValueError(f"destination page of {dst_item_len} bytes is not {dst_local} heads of "
                         f"{head_bytes} bytes x {page_size} tokens")
    tok = np.arange(page_size, dtype=np.int64)
    s_off = (src_pages[:, None] * src_item_len + tok[None, :] * (src_local * head_bytes)
             + src_head * head_bytes).ravel()
    d_off = (dst_pages[:, None] * dst_item_len + tok[None, :] * (dst_local * head_bytes)
             + dst_head * head_bytes).ravel()
    src = np.add.outer(np.asarray(src_ptrs, dtype=np.int64), s_off).ravel()
    dst = np.add.outer(np.asarray(dst_ptrs, dtype=np.int64), d_off).ravel()
    return Blocks(src.tolist(), dst.tolist(), [num_heads * head_bytes] * int(src.size))
