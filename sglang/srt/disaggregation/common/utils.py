"""Page-run grouping: turn (src page, dst page) pairs into as few memory blocks as possible.

A KV region holds one page per ``item_len`` bytes, consecutive pages adjacent. When both the
source and the destination page indices advance by exactly one, the pages form a run that moves
as one block; transfer engines pay per block, so long runs are what makes transfers fast.
"""

from __future__ import annotations

import socket
from typing import NamedTuple, Sequence

import numpy as np


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


def kv_blocks(
    runs: PageRuns, src_ptrs: Sequence[int], dst_ptrs: Sequence[int], item_len: int
) -> Blocks:
    """One block per run per region (every layer's K and V), region by region."""
    if len(src_ptrs) != len(dst_ptrs):
        raise ValueError(f"{len(src_ptrs)} source regions but {len(dst_ptrs)} destination ones")
    if len(runs) == 0:
        return Blocks([], [], [])
    src_off = runs.src_starts * item_len
    dst_off = runs.dst_starts * item_len
    nbytes = (runs.lengths * item_len).tolist()
    src: list[int] = []
    dst: list[int] = []
    for sp, dp in zip(src_ptrs, dst_ptrs):
        src.extend((src_off + sp).tolist())
        dst.extend((dst_off + dp).tolist())
    return Blocks(src, dst, nbytes * len(src_ptrs))


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


def batched(blocks: Blocks, size: int) -> list[Blocks]:
    """Cut ``blocks`` into pieces of at most ``size`` entries (engines reject huge batches)."""
    n = len(blocks.src)
    return [
        Blocks(blocks.src[i : i + size], blocks.dst[i : i + size], blocks.lens[i : i + size])
        for i in range(0, n, size)
    ]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_host(host: str) -> str:
    """Host part of a URL: 0.0.0.0 means this machine, IPv6 needs brackets."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host
