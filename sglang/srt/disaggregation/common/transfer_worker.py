"""Prefill transfer workers: threads that turn queued chunks into transfer-engine writes.

A room's jobs always go to the same queue (``room % n``), so its chunks are written in order
and its aux row and Success come after all of its pages. A write that fails marks the
destination decode as failed: later chunks for it fail at once instead of waiting on a dead
peer, until the decode answers a probe (peer_probe.py) or registers again. Injected test
failures (faults.py) fail only their room. ``after_pending`` runs a callback on a room's queue
once every job queued before it for that room has run (or been dropped): how an abort is
acknowledged only after the room's in-flight writes drained.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Union

import numpy as np

from sglang.srt.disaggregation.base.conn import KVPoll
from sglang.srt.disaggregation.common import faults
from sglang.srt.disaggregation.common.messages import StatusMsg
from sglang.srt.disaggregation.common.room_table import PeerInfo
from sglang.srt.disaggregation.common.tp_layout import head_slice_blocks, same_layout
from sglang.srt.disaggregation.common.utils import (
    Blocks,
    aux_blocks,
    group_concurrent_contiguous,
    kv_blocks,
    sort_pairs,
)
from sglang.srt.env import envs

if TYPE_CHECKING:
    from sglang.srt.disaggregation.common.manager import CommonKVManager
    from sglang.srt.disaggregation.common.prefill_side import PrefillSide

logger = logging.getLogger(__name__)


class TransferFailed(RuntimeError):
    """A transfer-engine write did not complete."""


@dataclass
class Dest:
    """One decode rank a chunk goes to: its pages for the chunk and its metadata row."""

    peer: str
    dst_pages: np.ndarray
    dst_aux_index: int
    staged: bool = False  # dst_pages are the decode's staging pages (whole source pages)


@dataclass
class TransferJob:
    room: int
    dsts: list[Dest]  # one per decode rank served by this prefill rank (same TP: one)
    src_pages: np.ndarray
    last_chunk: bool
    aux_index: int


class TransferWorkers:
    def __init__(self, mgr: CommonKVManager, side: PrefillSide, num_threads: int):
        self.mgr = mgr
        self.side = side
        # SimpleQueue: put and get are C code, and a put wakes a waiting worker directly
        self._queues: list[queue.SimpleQueue[Union[TransferJob, Callable[[], None], None]]] = [
            queue.SimpleQueue() for _ in range(num_threads)
        ]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"kv-transfer-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()
        self._fanout = ThreadPoolExecutor(num_threads, thread_name_prefix="kv-fanout")

    def submit(self, job: TransferJob) -> None:
        self._queues[job.room % len(self._queues)].put(job)

    def after_pending(self, room: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` on ``room``'s worker once the jobs queued for the room so far are done."""
        self._queues[room % len(self._queues)].put(fn)

    def _run(self, q: queue.SimpleQueue[Union[TransferJob, Callable[[], None], None]]) -> None:
        while True:
            job = q.get()
            if job is None:
                return
            if not isinstance(job, TransferJob):
                try:
                    job()
                except Exception:
                    logger.exception("transfer worker callback failed")
                continue
            try:
                self._execute(job)
            except Exception as e:  # never let a worker die: fail the room instead
                logger.exception("Request %d: transfer worker error", job.room)
                self.side.fail(job.room, f"Transfer worker error for {job.room}: {e}", True)

    def _execute(self, job: TransferJob) -> None:
        if len(job.dsts) == 1:
            ok = self._write(job, job.dsts[0])
        else:  # several decode ranks (TP): written at once, a gather overlapping a write
            ok = all(list(self._fanout.map(lambda d: self._write(job, d), job.dsts)))
        if not ok:
            return
        logger.debug("Request %d: wrote %d pages to %d decode rank(s)%s", job.room,
                     len(job.src_pages), len(job.dsts), " (last chunk + aux)" if job.last_chunk
                     else "")
        if job.last_chunk:
            self._conclude(job)

    def _kv_writes(self, job: TransferJob, dest: Dest, peer: PeerInfo) -> Iterator[Blocks]:
        """The chunk's KV writes into one decode rank, one Blocks per engine call (a gathered
        piece's staging buffer is lent only while its write runs)."""
        mgr, args = self.mgr, self.mgr.args
        local = mgr.tp_info()["num_local_kv_heads"]
        if (dest.staged  # whole pages into the decode's staging (tp_staging.py: scatter)
                or peer.num_heads == -1 or same_layout(local, peer.dst_num_heads, peer.num_heads)):
            runs = group_concurrent_contiguous(*sort_pairs(job.src_pages, dest.dst_pages))
            dst_ptrs = peer.stage_ptrs if dest.staged else peer.kv_ptrs
            yield kv_blocks(runs, args.kv_data_ptrs, dst_ptrs, args.kv_item_len)
        elif (peer.num_heads == peer.dst_num_heads and mgr.gather_bufs is not None
              and mgr.pool_view is not None):  # the decode's whole pages: gather, then pages
            for buf, item, dst in mgr.gather_bufs.pieces(
                    mgr.pool_view, job.src_pages, dest.dst_pages, peer.src_head, peer.num_heads):
                runs = group_concurrent_contiguous(np.arange(len(dst)), dst)
                yield kv_blocks(runs, buf.ptrs(), peer.kv_ptrs, item)
        else:  # one block per token
            yield head_slice_blocks(job.src_pages, dest.dst_pages, args.kv_data_ptrs,
                                    peer.kv_ptrs, args.kv_item_len, peer.kv_item_len,
                                    args.page_size, local, peer.dst_num_heads, peer.src_head,
                                    peer.dst_head, peer.num_heads)

    def _write(self, job: TransferJob, dest: Dest) -> bool:
        """Write the chunk into one decode rank; False once the room failed."""
        side, room = self.side, job.room
        st = side.rooms.get(room)
        if st is None or st.status == KVPoll.Failed:
            return False  # aborted or cleared: drop the chunk
        peer = side.decodes.peers.get(dest.peer)
        if peer is None or dest.peer in side.decodes.failed:
            side.fail(
                room,
                f"Decode instance {dest.peer} could be dead: an earlier transfer to it failed; "
                f"request {room} is not sent",
                notify=True,
            )
            return False
        args = self.mgr.args
        aux = None
        if job.last_chunk and peer.sends_aux:
            aux = aux_blocks(
                args.aux_data_ptrs, peer.aux_ptrs, args.aux_item_lens,
                job.aux_index, dest.dst_aux_index,
            )
        if st.t_first is None:
            st.t_first = time.monotonic()
        if envs.test_transfer_delay > 0:  # test only: keep this write in flight a while
            time.sleep(envs.test_transfer_delay)
        nbytes = nblocks = 0
        hooks = bool(envs.test_write_delay_ms or envs.test_write_failure_prob)  # test-only knobs
        try:
            for blocks in self._kv_writes(job, dest, peer):
                if hooks:  # once per chunk and destination
                    faults.before_write("KV" if blocks.src else "metadata", dest.peer)
                    hooks = False
                if aux is not None and blocks.src and self.mgr.merges_aux(peer):
                    self.mgr.write(peer, blocks + aux, "kv")  # one engine call, one completion
                    aux = None
                elif blocks.src:
                    self.mgr.write(peer, blocks, "kv")
                nbytes, nblocks = nbytes + blocks.total_bytes(), nblocks + len(blocks.src)
            if aux is not None:
                if hooks:
                    faults.before_write("metadata", dest.peer)
                self.mgr.write(peer, aux, "aux")
        except Exception as e:
            if not isinstance(e, faults.InjectedWriteFailure):
                side.decodes.failed.mark_failed(dest.peer)
            if st.status == KVPoll.Failed:  # fail() would say nothing of an aborted room
                logger.warning("Request %d (aborted): write to %s failed: %s", room, dest.peer, e)
            side.fail(room, f"Failed to send kv chunk of {room} to {dest.peer}: {e}", notify=True)
            return False
        st.bytes += nbytes
        st.blocks += nblocks
        return True

    def _conclude(self, job: TransferJob) -> None:
        side, room = self.side, job.room
        st = side.rooms.get(room)
        if st is None or st.status == KVPoll.Failed:
            return
        st.t_done = time.monotonic()
        msg = StatusMsg(self.mgr.endpoint, room, int(KVPoll.Success))
        for dest in job.dsts:
            if not self.mgr.control.send(dest.peer, msg):
                side.fail(room, f"Could not tell decode {dest.peer} that request {room} arrived",
                          notify=True)
                return
        side.rooms.set_status(room, KVPoll.Success)
        if logger.isEnabledFor(logging.DEBUG):
            m = side.metric(room)
            logger.debug(
                "Request %d: transfer done, %d bytes in %d blocks, %.3fs, %.2f GB/s",
                room, m.get("bytes", 0), m.get("blocks", 0), m.get("seconds", 0),
                m.get("gbps", 0),
            )

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout=2)
        self._fanout.shutdown(wait=False, cancel_futures=True)
