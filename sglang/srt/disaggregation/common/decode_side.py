"""Decode side of the common manager: the state of every KVReceiver.

The first receiver for a bootstrap address starts the handshake with that prefill in a
background thread (prefill_connections.py); later receivers for it are ready at once. The
heartbeat drops a dead prefill's connections and fails its rooms, so a restarted prefill gets a
fresh handshake.

Once a room's pages went to the prefill, its writes may still land there after the decode gave
up on it. Giving up therefore always tells the prefill (AbortMsg), which answers AbortAckMsg
once it can no longer write; ``writes_drained`` says so, and only then may the scheduler reuse
the pages (or after SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT). A prefill lost to
the heartbeat sends no ack: missed heartbeats do not prove that its transfer threads stopped
(a busy or partitioned prefill misses them too), so the timeout decides.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from sglang.srt.disaggregation.base.conn import ABORTED, KVPoll
from sglang.srt.disaggregation.common import faults
from sglang.srt.disaggregation.common.handshake import HandshakeRefused, PrefillUnavailable
from sglang.srt.disaggregation.common.heartbeat import Heartbeat
from sglang.srt.disaggregation.common.messages import (
    AbortAckMsg,
    AbortMsg,
    MetadataMsg,
    PingMsg,
    PongMsg,
    StatusMsg,
)
from sglang.srt.disaggregation.common.prefill_connections import PrefillConnections
from sglang.srt.disaggregation.common.room_table import ReceiverRoom, RoomTable
from sglang.srt.disaggregation.common.tp_staging import stage, unstage
from sglang.srt.env import envs

if TYPE_CHECKING:
    from sglang.srt.disaggregation.common.manager import CommonKVManager

logger = logging.getLogger(__name__)


class DecodeSide:
    def __init__(self, mgr: CommonKVManager):
        self.mgr = mgr
        self.rooms: RoomTable[ReceiverRoom] = RoomTable()
        self.lock = self.rooms.lock
        self.addr_rooms: dict[str, set[int]] = defaultdict(set)
        self.conns = PrefillConnections(mgr, self.lock, lambda a: bool(self.addr_rooms.get(a)))
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-handshake")
        self.heartbeat = Heartbeat(self.conns.known, self.on_prefill_lost)

    # ---- new rooms -----------------------------------------------------------------------
    def add_receiver(self, room: int, bootstrap_addr: str) -> bool:
        """Track a new room; False (and nothing changed) if the room is already in flight."""
        fails = envs.test_failure_prob > 0 and faults.request_fails()  # test only
        st = ReceiverRoom(room, bootstrap_addr, inject_failure=fails)
        with self.lock:
            if self.rooms.get(room) is not None:
                logger.warning("Request %d: refused, bootstrap_room already in flight", room)
                return False
            self.rooms.add(st)
            self.addr_rooms[bootstrap_addr].add(room)
            info = self.conns.cached(bootstrap_addr, room)
            if info is not None:
                self._ready(st, info)
                return True
        self._pool.submit(self._handshake, room, bootstrap_addr)
        return True

    def _handshake(self, room: int, addr: str) -> None:
        try:
            info = self.conns.connect(addr, room)
        except (HandshakeRefused, PrefillUnavailable) as e:
            self.fail(room, str(e))
            return
        except Exception as e:
            logger.exception("Request %d: handshake with %s failed", room, addr)
            self.fail(room, f"handshake with prefill {addr} failed: {e}")
            return
        st = self.rooms.get(room)
        if st is not None:
            self._ready(st, info)

    def _ready(self, st: ReceiverRoom, info: dict[str, Any]) -> None:
        """The room's prefill is connected: it may now send its destination pages."""
        st.prefill_endpoint, st.sources = info["endpoint"], dict(info["sources"])
        st.staged = dict(info["staged"])
        self.rooms.set_status(st.room, KVPoll.WaitingForInput)

    # ---- receiver API (scheduler thread) -------------------------------------------------
    def send_metadata(self, room: int, pages: np.ndarray, aux_index: int) -> None:
        st = self.rooms.get(room)
        if st is None or st.status == KVPoll.Failed:
            return
        if st.status != KVPoll.WaitingForInput or st.metadata_sent_at is not None:
            self.fail(room, f"send_metadata() called in state {st.status.name}")
            return
        dst = np.ascontiguousarray(pages, dtype=np.int32).reshape(-1)
        st.num_pages = len(dst)
        st.metadata_sent_at = time.monotonic()
        st.dst_pages = dst
        for endpoint, expected in st.sources.items():
            pages, staged = dst, False
            if endpoint in st.staged:
                pages = stage(self.mgr, st, endpoint, len(dst))
                staged = pages is not None
                if pages is None:  # staging full: this room takes per-token blocks
                    del st.staged[endpoint]
                    pages = dst
            msg = MetadataMsg(self.mgr.endpoint, room, pages.tobytes(), int(aux_index), expected,
                              staged)
            if not self.mgr.control.send(endpoint, msg):
                st.acked.add(endpoint)  # the pages never left: nothing can be written into them
                self.fail(room, f"could not send the destination pages to {endpoint}",
                          tell_prefill=True)
                return
        logger.debug("Request %d: sent %d destination pages, aux row %d", room, len(dst), aux_index)

    def poll(self, room: int) -> KVPoll:
        st = self.rooms.get(room)
        if st is None:
            return KVPoll.Failed
        if st.status == KVPoll.WaitingForInput and st.metadata_sent_at is not None:
            waited = time.monotonic() - st.metadata_sent_at
            if waited > envs.waiting_timeout:
                self.fail(
                    room,
                    f"Request {room} timed out after {waited:.1f}s in KVPoll.WaitingForInput: "
                    f"prefill {st.bootstrap_addr} never reported the KV transfer done (raise "
                    f"SGLANG_DISAGGREGATION_WAITING_TIMEOUT if prefills are just slow)",
                    tell_prefill=True,
                )
        elif st.inject_failure and st.status not in (KVPoll.Success, KVPoll.Failed):
            self.fail(room, faults.INJECTED_REQUEST, True)
        return st.status

    def abort(self, room: int) -> None:
        self.fail(room, ABORTED, tell_prefill=True)

    def writes_drained(self, room: int) -> bool:
        """True once the prefill can no longer write into the room's pages."""
        st = self.rooms.get(room)
        return (
            st is None
            or st.metadata_sent_at is None  # the prefill never learnt the pages
            or st.status == KVPoll.Success  # every write landed before the prefill said so
            or st.writes_drained
            or (bool(st.sources) and (st.acked | st.succeeded) >= set(st.sources))
        )

    def clear(self, room: int) -> None:
        with self.lock:
            st = self.rooms.pop(room)
            if st is not None:
                self.addr_rooms[st.bootstrap_addr].discard(room)
                if st.staged and self.mgr.scatter is not None:
                    self.mgr.scatter.free_room(room)

    def fail(self, room: int, reason: str, tell_prefill: bool = False) -> None:
        if not self.rooms.set_status(room, KVPoll.Failed, reason):
            return
        logger.warning("Request %d failed: %s", room, reason)
        st = self.rooms.get(room)
        if tell_prefill and st is not None:
            for endpoint in st.sources:
                if endpoint not in st.acked:
                    self.mgr.control.send(endpoint, AbortMsg(self.mgr.endpoint, room, reason[:500]))

    # ---- control-plane handlers (control / heartbeat threads) ----------------------------
    def on_status(self, msg: StatusMsg) -> None:
        st = self.rooms.get(msg.room)
        if msg.reregister:
            self.conns.forget_endpoint(msg.peer)
        if st is None or msg.peer not in st.sources:
            return
        if msg.status == KVPoll.Success:
            if st.metadata_sent_at is None:
                return
            if msg.peer in st.staged and st.status != KVPoll.Failed:
                unstage(self.mgr, st, msg.peer)  # while the other sources still write
            st.succeeded.add(msg.peer)
            if (st.succeeded >= set(st.sources)
                    and self.rooms.set_status(msg.room, KVPoll.Success)):
                logger.debug("Request %d: KV arrived from %s", msg.room, sorted(st.succeeded))
            return
        if msg.reregister:
            st.acked.add(msg.peer)  # that prefill rank refused the pages: it never writes them
        # The prefill failed the room, but a write of it may still be in flight there (and on
        # the other source ranks): the AbortMsg asks for the acks that free the pages.
        self.fail(msg.room, f"Failed to get kvcache from prefill instance {msg.peer}: "
                            f"{msg.reason}", tell_prefill=True)

    def on_ping(self, msg: PingMsg) -> None:
        """A prefill probes this decode after a failed write: answer only a connected one."""
        if self.conns.knows_source(msg.peer):
            self.mgr.control.send(msg.peer, PongMsg(self.mgr.endpoint))
        else:
            logger.debug("Ping from unknown prefill %s ignored", msg.peer)

    def on_abort_ack(self, msg: AbortAckMsg) -> None:
        st = self.rooms.get(msg.room)
        if st is None:  # late (after the timeout), duplicate after release, or forged
            logger.debug("Abort ack for unknown request %d from %s ignored", msg.room, msg.peer)
            return
        if msg.peer not in st.sources or st.status != KVPoll.Failed:
            logger.warning(
                "Abort ack for request %d from %s ignored: its prefill is %s, status %s",
                msg.room, msg.peer, st.prefill_endpoint or "unknown", st.status.name,
            )
            return
        if st.writes_drained or msg.peer in st.acked:
            logger.debug("Duplicate abort ack for request %d ignored", msg.room)
            return
        st.acked.add(msg.peer)
        logger.debug("Request %d: prefill %s acknowledged the abort", msg.room, msg.peer)

    def on_prefill_lost(self, addr: str, why: str) -> None:
        """Fail every unfinished room that went through this prefill connection, and forget
        the connection so that the next request handshakes afresh."""
        with self.lock:
            infos = self.conns.pop(addr)
            rooms = list(self.addr_rooms.get(addr, ()))
        if not infos:
            return
        endpoints = {e for info in infos for e in info["sources"]}
        for endpoint in endpoints:
            self.mgr.control.forget(endpoint)
        reason = f"Lost connection with prefill instance (bootstrap_addr: {addr}): {why}"
        affected = 0
        for room in rooms:
            st = self.rooms.get(room)
            if st is None or st.prefill_endpoint not in endpoints:
                continue  # a room of an earlier connection
            if st.status not in (KVPoll.Success, KVPoll.Failed):
                self.fail(room, reason)
                affected += 1
        logger.error("%s; %d requests affected", reason, affected)

    def close(self) -> None:
        self.conns.close()
        self.heartbeat.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
