"""Page-run grouping: turn (src page, dst page) pairs into as few memory blocks as possible.

A KV region holds one page per ``item_len`` bytes, consecutive pages adjacent. When both the
source and the destination page indices advance by exactly one, the pages form a run that moves
as one block; transfer engines pay per block, so long runs are what makes transfers fast.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from sglang.srt.utils.network import free_port, url_host as http_host  # noqa: F401 (shared)


class PageRuns(NamedTuple):
    """Runs of pages that are consecutive on both sides: ``lengths[i]`` pages starting at
    ``src_starts[i]`` (source) and ``dst_starts[i]`` (destination)."""

    src_starts: np.ndarray
    dst_starts: np.ndarray
    lengths: np.ndarray

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


class Blocks(NamedTuple):
    """Memory blocks to write: parallel lists of source address, destination address, bytes."""

    src: list[int]
    dst: list[int]
    lens: list[int]

    def total_bytes(self) -> int:
        return sum(self.lens)

    def __add__(self, other: object) -> "Blocks":  # type: ignore[override]
        if not isinstance(other, Blocks):
            return NotImplemented
        return Blocks(self.src + other.src, self.dst + other.dst, self.lens + other.lens)


def group_concurrent_contiguous(src_pages: np.ndarray, dst_pages: np.ndarray) -> PageRuns:
    """Split the pairs wherever either the source or the destination index does not advance
    by exactly one; each piece is one run."""
    src = np.asarray(src_pages, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst_pages, dtype=np.int64).reshape(-1)
    if src.shape != dst.shape:
        raise ValueError(f"{src.shape[0]} source pages but {dst.shape[0]} destination pages")
    if src.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return PageRuns(empty, empty, empty)
    breaks = np.flatnonzero((np.diff(src) != 1) | (np.diff(dst) != 1)) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [src.size]))
    return PageRuns(src[starts], dst[starts], ends - starts)


def sort_pairs(src_pages: np.ndarray, dst_pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (src, dst) page pairs ordered by source page. Each page moves on its own, so order
    does not matter to the result; sorted, pairs that are adjacent on both sides but arrive out
    of order (a prefix hit's older pages, a reversed free list) fall into one run."""
    src = np.asarray(src_pages, dtype=np.int64).reshape(-1)
    dst = np.asarray(dst_pages, dtype=np.int64).reshape(-1)
    if src.shape != dst.shape:
        raise ValueError(f"{src.shape[0]} source pages but {dst.shape[0]} destination pages")
    if src.size < 2 or bool((np.diff(src) > 0).all()):
        return src, dst
    order = np.argsort(src, kind="stable")
    return src[order], dst[order]


def kv_blocks(
    runs: PageRuns, src_ptrs: Sequence[int], dst_ptrs: Sequence[int], item_len: int
) -> Blocks:
    """One block per run per region (every layer's K and V), region by region. Built with one
    numpy broadcast per side (region base + run offset), not a Python loop over regions: this
    runs on the transfer worker for every request, before its first byte moves."""
    if len(src_ptrs) != len(dst_ptrs):
        raise ValueError(f"{len(src_ptrs)} source regions but {len(dst_ptrs)} destination ones")
    if len(runs) == 0:
        return Blocks([], [], [])
    src_off = runs.src_starts * item_len
    dst_off = runs.dst_starts * item_len
    src = np.add.outer(np.asarray(src_ptrs, dtype=np.int64), src_off).ravel()
    dst = np.add.outer(np.asarray(dst_ptrs, dtype=np.int64), dst_off).ravel()
    nbytes = (runs.lengths * item_len).tolist()
    return Blocks(src.tolist(), dst.tolist(), nbytes * len(src_ptrs))


def aux_blocks(
    src_ptrs: Sequence[int],
    dst_ptrs: Sequence[int],
    item_lens: Sequence[int],
    src_index: int,
    dst_index: int,
) -> Blocks:
    """Row ``src_index`` of every metadata buffer into row ``dst_index`` of the peer's."""
    return Blocks(
        [p + src_index * n for p, n in zip(src_ptrs, item_lens)],
        [p + dst_index * n for p, n in zip(dst_ptrs, item_lens)],
        list(item_lens),
    )


def merge_adjacent(ptrs: Sequence[int], lens: Sequence[int]) -> list[tuple[int, int]]:
    """Memory regions as few (ptr, nbytes) ranges as possible: sorted, and a range that starts
    where the previous one ends joins it (a KV pool's per-layer regions are one allocation, so
    they register as one region and a block may span layers). Empty regions are dropped;
    overlapping ones are kept apart (registering them merged could hide a caller's mistake)."""
    out: list[tuple[int, int]] = []
    for p, n in sorted((int(p), int(n)) for p, n in zip(ptrs, lens) if n > 0):
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + n)
        elif not out or out[-1] != (p, n):
            out.append((p, n))
    return out


def batched(blocks: Blocks, size: int) -> list[Blocks]:
    """Cut ``blocks`` into pieces of at most ``size`` entries (engines reject huge batches)."""
    n = len(blocks.src)
    return [
        Blocks(blocks.src[i : i + size], blocks.dst[i : i + size], blocks.lens[i : i + size])
        for i in range(0, n, size)
    ]
