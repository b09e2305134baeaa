"""Staging buffers that keep PD between different TP sizes at whole-page speed.

A head slice of a page is one small block per token (tp_layout.py); engines pay per block. Two
cases move whole pages instead, through a buffer registered with the engine like the KV pool and
on the pool's device (DRAM or VRAM):

  gather  (prefill side; the decode rank's whole page is part of the prefill rank's heads, e.g.
          P tp1 -> D tp2): the transfer worker copies the slice of the chunk's pages into a
          staging buffer laid out as the decode's pages, and writes those as page runs; the
          next piece is gathered while one is written.
  scatter (decode side; the prefill rank's whole page is part of the decode rank's heads, e.g.
          P tp2 -> D tp1): the decode gives such a source staging pages instead of pool pages
          (``MetadataMsg.staged``); the prefill writes its whole pages there; once every source
          reported Success the decode's control thread copies them into its pool's heads, then
          sets the room Success. The room's staging is freed when the room is cleared.

The copies are torch index ops on the pool tensor (``KVArgs.kv_buffer``): the same code for KV
in DRAM and in VRAM (a CUDA copy is waited for before the engine reads or the room is done).
Neither applies with SGLANG_DISAGGREGATION_TP_STAGING_MB=0 (or without ``kv_buffer``), or when
the decode's staging is full (that room then takes per-token blocks). The buffers take that many
MB per KV manager: in DRAM, faulted in at first use; in VRAM, allocated at start.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Iterator, Optional

import numpy as np
import torch

from sglang.srt.env import envs


def staging_bytes() -> int:
    return envs.tp_staging_bytes


def pool_heads(buffer: torch.Tensor, regions: int, pages: int, page_size: int,
               local: int) -> Optional[torch.Tensor]:
    """The KV pool tensor (regions of pages, each page [token, head, ...]) as [region, page,
    token, head, head word], a view (never a copy); words of 8 bytes where a head's bytes allow
    (8x fewer elements to index). None for a pool that is not one contiguous tensor."""
    if not buffer.is_contiguous() or regions <= 0 or local <= 0:
        return None
    raw = buffer.reshape(-1).view(torch.uint8)
    per_head, rest = divmod(raw.numel(), regions * pages * page_size * local)
    if rest or per_head == 0:
        return None
    words = raw.view(torch.int64) if per_head % 8 == 0 else raw
    hw = per_head // words.element_size()
    return words.view(regions, pages, page_size, local, hw)


def _index(pages: Any, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(pages, dtype=np.int64), device=device)


def _done(t: torch.Tensor) -> None:
    """Wait for the copy into ``t`` (a CUDA kernel runs asynchronously; the engine or the next
    forward must see its bytes)."""
    if t.is_cuda:
        torch.cuda.current_stream(t.device).synchronize()


class Buffer:
    """``nbytes`` on ``device``, seen as ``regions`` equal rows (one per KV region)."""

    def __init__(self, nbytes: int, regions: int, device: torch.device):
        self.regions = regions
        self.row = (nbytes // max(regions, 1)) & ~63
        self.tensor = torch.empty(regions * self.row, dtype=torch.uint8, device=device)
        self.ptr = int(self.tensor.data_ptr())
        self.nbytes = regions * self.row
        self._touched = self.tensor.is_cuda  # VRAM is backed at allocation

    def touch(self) -> None:
        """Fault every page of DRAM in once, before the first use: a first write into fresh
        memory costs a page fault per 4 KiB (seen here: 0.3 s for the first 15 MB piece)."""
        if not self._touched:
            self.tensor.zero_()
            self._touched = True

    def ptrs(self) -> list[int]:
        return [self.ptr + r * self.row for r in range(self.regions)]

    def rows(self, nbytes: int, like: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Bytes [start, start + nbytes) of every row, in the element type of ``like``."""
        return self.tensor.view(self.regions, self.row)[:, start : start + nbytes].view(like.dtype)


class GatherBuffers:
    """Prefill side: staging buffers lent out per write, and threads that fill them ahead."""

    # a destination's chunk is gathered in at least this many pieces, each written while the
    # next is gathered (the gather is a second pass over the bytes: overlapped, not added)
    PIECES = 4

    def __init__(self, total: int, threads: int, regions: int, device: torch.device):
        self.buffers = [Buffer(total // threads, regions, device) for _ in range(threads)]
        self._free: queue.SimpleQueue[Buffer] = queue.SimpleQueue()
        for b in self.buffers:
            self._free.put(b)
        self._fill = ThreadPoolExecutor(threads, thread_name_prefix="kv-gather")

    def ptrs_lens(self) -> tuple[list[int], list[int]]:
        return [b.ptr for b in self.buffers], [b.nbytes for b in self.buffers]

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

    def pieces(self, heads: torch.Tensor, src_pages: np.ndarray, dst_pages: np.ndarray,
               src_head: int, num_heads: int) -> Iterator[tuple[Buffer, int, np.ndarray]]:
        """Gather heads [src_head, +num_heads) of ``src_pages`` of the pool (``heads``:
        pool_heads()) piece by piece; yields (buffer, page bytes, the piece's ``dst_pages``),
        the buffer holding the piece's pages from row offset 0 and valid until the next step.
        While the caller writes one piece, a second buffer (when one is free; never waited for,
        so writers cannot deadlock on buffers) is filled with the next."""
        n = len(src_pages)
        page_bytes = heads[0, 0, :, :num_heads].numel() * heads.element_size()
        step = max(1, min(self.buffers[0].row // page_bytes, -(-n // self.PIECES)))
        starts = range(0, n, step)

        def fill(i: int, buf: Buffer) -> int:
            return gather(heads, src_pages[i : i + step], src_head, num_heads, buf)

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


def gather(heads: torch.Tensor, src_pages: np.ndarray, src_head: int, num_heads: int,
           buf: Buffer) -> int:
    """Copy heads [src_head, +num_heads) of ``src_pages`` of every region of the pool
    (``heads``: pool_heads()) into ``buf`` as whole pages of ``num_heads`` heads, page i at row
    offset i * page bytes; returns the page bytes."""
    r, _, page_size, _, hw = heads.shape
    n = len(src_pages)
    out_item = page_size * num_heads * hw * heads.element_size()
    dst = buf.rows(n * out_item, heads).view(r, n, page_size, num_heads, hw)
    torch.index_select(heads[:, :, :, src_head : src_head + num_heads], 1,
                       _index(src_pages, heads.device), out=dst)
    _done(dst)
    return out_item


class ScatterStaging:
    """Decode side: one registered buffer; rooms take ranges of whole source pages of it."""

    def __init__(self, total: int, regions: int, device: torch.device):
        self.buf = Buffer(total, regions, device)
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

    def scatter(self, room: int, source: str, heads: torch.Tensor, dst_pages: np.ndarray,
                dst_head: int) -> None:
        """Copy the room's staged pages from ``source`` into heads [dst_head, ...) of
        ``dst_pages`` of the pool (``heads``: pool_heads())."""
        off, n, item = self.taken[room, source]
        r, _, page_size, _, hw = heads.shape
        num = item // (page_size * hw * heads.element_size())
        src = self.buf.rows(n * item, heads, off).view(r, n, page_size, num, hw)
        heads[:, :, :, dst_head : dst_head + num].index_copy_(
            1, _index(dst_pages, heads.device), src)
        _done(heads)


def stage(mgr: Any, st: Any, endpoint: str, n: int) -> Optional[np.ndarray]:
    """Decode side: staging pages for ``n`` whole pages of source ``endpoint`` of room ``st``
    (a ReceiverRoom), or None when the staging is full."""
    a, local = mgr.args, mgr.tp_info()["num_local_kv_heads"]
    item = a.kv_item_len // local * st.staged[endpoint][1]  # one source page
    return mgr.scatter.alloc(st.room, endpoint, n, item)


def unstage(mgr: Any, st: Any, endpoint: str) -> None:
    """Decode side: source ``endpoint`` said Success: copy its staged pages into the pool."""
    mgr.scatter.scatter(st.room, endpoint, mgr.pool_view, st.dst_pages, st.staged[endpoint][0])
