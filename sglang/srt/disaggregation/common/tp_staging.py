"""Staging buffers that keep PD between different TP sizes at whole-page speed (KV in DRAM).

A head slice of a page is one small block per token (tp_layout.py); engines pay per block. Two
cases move whole pages instead, through a buffer registered with the engine like the KV pool:

  gather  (prefill side; the decode rank's whole page is part of the prefill rank's heads, e.g.
          P tp1 -> D tp2): the transfer worker copies the slice of the chunk's pages into its
          staging buffer laid out as the decode's pages, and writes those as page runs.
  scatter (decode side; the prefill rank's whole page is part of the decode rank's heads, e.g.
          P tp2 -> D tp1): the decode gives such a source staging pages instead of pool pages
          (``MetadataMsg.staged``); the prefill writes its whole pages there; once every source
          reported Success the decode's control thread copies them into its pool's heads, then
          sets the room Success. The room's staging is freed when the room is cleared.

Neither applies to KV in VRAM, with SGLANG_DISAGGREGATION_TP_STAGING_MB=0, or when the
decode's staging is full (that room then takes per-token blocks).
"""

from __future__ import annotations

import ctypes
import queue
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from sglang.srt.env import envs


def staging_bytes() -> int:
    return envs.tp_staging_bytes


def heads_view(pool: np.ndarray, page_size: int, local: int) -> np.ndarray:
    """[region, page, byte] as [region, page, token, head, head word], a view (never a copy);
    words of 8 bytes where the head's bytes allow (8x fewer elements for torch to copy)."""
    r, n, item = pool.shape
    hb = item // (page_size * local)
    s0, s1, _ = pool.strides
    addr = pool.ctypes.data
    w = 8 if hb % 8 == 0 and addr % 8 == 0 and s0 % 8 == 0 and s1 % 8 == 0 else 1
    extent = s0 * (r - 1) + s1 * (n - 1) + item
    base = np.frombuffer((ctypes.c_uint8 * extent).from_address(addr),
                         dtype=np.int64 if w == 8 else np.uint8)
    return np.lib.stride_tricks.as_strided(base, (r, n, page_size, local, hb // w),
                                           (s0, s1, local * hb, hb, w))


def _words(a: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``a`` (uint8, last axis contiguous) in the element type of ``like``."""
    return a if like.dtype == a.dtype else a.view(like.dtype)


def region_view(ptrs: Sequence[int], item_len: int, num_pages: int) -> Optional[np.ndarray]:
    """The KV regions as one uint8 array [region, page, byte] (None unless they are equally
    spaced, as a KVPool's are)."""
    if not ptrs:
        return None
    stride = ptrs[1] - ptrs[0] if len(ptrs) > 1 else num_pages * item_len
    if stride < num_pages * item_len or any(b - a != stride for a, b in zip(ptrs, ptrs[1:])):
        return None
    raw = (ctypes.c_uint8 * (stride * (len(ptrs) - 1) + num_pages * item_len)).from_address(
        ptrs[0])
    base = np.frombuffer(raw, dtype=np.uint8)
    return np.lib.stride_tricks.as_strided(base, (len(ptrs), num_pages, item_len),
                                           (stride, item_len, 1))


class Buffer:
    """``nbytes`` of DRAM, seen as ``regions`` equal rows (one per KV region)."""

    def __init__(self, nbytes: int, regions: int):
        self.regions = regions
        self.row = (nbytes // max(regions, 1)) & ~63
        self.array = np.empty(regions * self.row, dtype=np.uint8)
        self.ptr = int(self.array.ctypes.data)
        self._touched = False

    def touch(self) -> None:
        """Fault every page in once, before the first use: a first write into fresh memory
        costs a page fault per 4 KiB (seen here: 0.3 s for the first 15 MB piece)."""
        if not self._touched:
            self.array.fill(0)
            self._touched = True

    def ptrs(self) -> list[int]:
        return [self.ptr + r * self.row for r in range(self.regions)]

    def rows(self, nbytes: int) -> np.ndarray:
        return self.array.reshape(self.regions, self.row)[:, :nbytes]


class GatherBuffers:
    """Prefill side: staging buffers lent out per write, and threads that fill them ahead."""

    # a destination's chunk is gathered in at least this many pieces, each written while the
    # next is gathered (the gather is a second pass over the bytes: overlapped, not added)
    PIECES = 4

    def __init__(self, total: int, threads: int, regions: int):
        self.buffers = [Buffer(total // threads, regions) for _ in range(threads)]
        self._free: queue.SimpleQueue[Buffer] = queue.SimpleQueue()
        for b in self.buffers:
            self._free.put(b)
        self._fill = ThreadPoolExecutor(threads, thread_name_prefix="kv-gather")

    def ptrs_lens(self) -> tuple[list[int], list[int]]:
        return [b.ptr for b in self.buffers], [b.array.nbytes for b in self.buffers]

    def take(self, block: bool = True) -> Optional[Buffer]:
        """A free buffer (None if ``block`` is False and none is free), its memory touched."""
        try:
            b = self._free.get(block)
        except queue.Empty:
            return None
        b.touch()
        return b

    def give(self, b: Buffer) -> None:
        self._free.put(b)

    def pieces(self, pool: np.ndarray, src_pages: np.ndarray, dst_pages: np.ndarray,
               page_size: int, src_local: int, src_head: int, num_heads: int,
               page_bytes: int) -> Iterator[tuple[Buffer, int, np.ndarray]]:
        """Gather heads [src_head, +num_heads) of ``src_pages`` piece by piece; yields (buffer,
        page bytes, the piece's ``dst_pages``), the buffer holding the piece's pages from row
        offset 0 and valid until the next step. While the caller writes one piece, a second
        buffer (when one is free; never waited for, so writers cannot deadlock on buffers)
        is filled with the next."""
        n = len(src_pages)
        step = max(1, min(self.buffers[0].row // page_bytes, -(-n // self.PIECES)))
        starts = range(0, n, step)

        def fill(i: int, buf: Buffer) -> int:
            return gather(pool, src_pages[i : i + step], page_size, src_local, src_head,
                          num_heads, buf)

        cur, spare, ahead = self.take(), None, None
        assert cur is not None
        try:
            item = fill(0, cur)
            for k, i in enumerate(starts):
                last = k + 1 == len(starts)
                if not last:
                    spare = spare or self.take(block=False)
                    if spare is not None:
                        ahead = self._fill.submit(fill, starts[k + 1], spare)
                yield cur, item, dst_pages[i : i + step]
                if last:
                    break
                if ahead is not None:
                    item, ahead = ahead.result(), None
                    cur, spare = spare, cur
                else:
                    item = fill(starts[k + 1], cur)
        finally:
            if ahead is not None:  # the caller stopped early: let the fill end before lending
                wait([ahead])
            self.give(cur)
            if spare is not None:
                self.give(spare)

    def close(self) -> None:
        self._fill.shutdown(wait=False, cancel_futures=True)


def gather(pool: np.ndarray, src_pages: np.ndarray, page_size: int, src_local: int,
           src_head: int, num_heads: int, buf: Buffer) -> int:
    """Copy heads [src_head, +num_heads) of ``src_pages`` of every region into ``buf`` as whole
    pages of ``num_heads`` heads, page i at row offset i * page bytes; returns the page bytes."""
    r, _, item = pool.shape
    hb = item // (page_size * src_local)
    out_item = page_size * num_heads * hb
    dst = buf.rows(len(src_pages) * out_item).reshape(r, len(src_pages), page_size, num_heads, hb)
    view = heads_view(pool, page_size, src_local)
    src = torch.from_numpy(view)[:, :, :, src_head : src_head + num_heads]
    torch.index_select(src, 1, torch.from_numpy(np.asarray(src_pages, dtype=np.int64)),
                       out=torch.from_numpy(_words(dst, view)))
    return out_item


class ScatterStaging:
    """Decode side: one registered buffer; rooms take ranges of whole source pages of it."""

    def __init__(self, total: int, regions: int):
        self.buf = Buffer(total, regions)
        self._lock = threading.Lock()
        self._free: list[tuple[int, int]] = [(0, self.buf.row)]  # (start, end) byte offsets
        self.taken: dict[tuple[int, str], tuple[int, int, int]] = {}  # (room, src)->(off, n, item)

    def alloc(self, room: int, source: str, pages: int, item: int) -> Optional[np.ndarray]:
        """Staging page indices (in units of ``item`` bytes) for ``pages`` pages, or None."""
        need = pages * item
        self.buf.touch()
        with self._lock:
            for i, (s, e) in enumerate(self._free):
                start = -(-s // item) * item
                if start + need <= e:
                    rest = [(s, start), (start + need, e)]
                    self._free[i : i + 1] = [x for x in rest if x[0] < x[1]]
                    self.taken[room, source] = (start, pages, item)
                    return np.arange(start // item, start // item + pages, dtype=np.int32)
        return None

    def free_room(self, room: int) -> None:
        with self._lock:
            for key in [k for k in self.taken if k[0] == room]:
                off, n, item = self.taken.pop(key)
                self._free.append((off, off + n * item))
            self._free.sort()
            merged: list[tuple[int, int]] = []
            for s, e in self._free:
                if merged and merged[-1][1] == s:
                    merged[-1] = (merged[-1][0], e)
                else:
                    merged.append((s, e))
            self._free = merged

    def scatter(self, room: int, source: str, pool: np.ndarray, dst_pages: np.ndarray,
                page_size: int, dst_local: int, dst_head: int) -> None:
        """Copy the room's staged pages from ``source`` into heads [dst_head, ...) of
        ``dst_pages`` of the pool ([region, page, byte])."""
        off, n, item = self.taken[room, source]
        r = pool.shape[0]
        hb = pool.shape[2] // (page_size * dst_local)
        heads = item // (page_size * hb)
        src = self.buf.rows(off + n * item)[:, off:].reshape(r, n, page_size, heads, hb)
        words = heads_view(pool, page_size, dst_local)
        view = torch.from_numpy(words)
        view[:, :, :, dst_head : dst_head + heads].index_copy_(
            1, torch.from_numpy(np.asarray(dst_pages, dtype=np.int64)),
            torch.from_numpy(_words(src, words)))


def stage(mgr: Any, st: Any, endpoint: str, n: int) -> Optional[np.ndarray]:
    """Decode side: staging pages for ``n`` whole pages of source ``endpoint`` of room ``st``
    (a ReceiverRoom), or None when the staging is full."""
    a, local = mgr.args, mgr.tp_info()["num_local_kv_heads"]
    item = a.kv_item_len // local * st.staged[endpoint][1]  # one source page
    return mgr.scatter.alloc(st.room, endpoint, n, item)


def unstage(mgr: Any, st: Any, endpoint: str) -> None:
    """Decode side: source ``endpoint`` said Success: copy its staged pages into the pool."""
    mgr.scatter.scatter(st.room, endpoint, mgr.pool_view, st.dst_pages, mgr.args.page_size,
                        mgr.tp_info()["num_local_kv_heads"], st.staged[endpoint][0])
