"""Prefill side of the common manager: where each room goes, and the state of every KVSender
(which decodes exist is decode_peers.py).

A room's destination (TransferInfo) may arrive before the prefill's sender for it exists: the
load balancer sends the request to both sides at once. It may also arrive after the sender
failed (bootstrap timeout, abort, a prompt the prefill refused): the decode is then told at once
instead of waiting out its own timeout. Destinations, aborts and failures that never meet their
counterpart are dropped after the bootstrap timeout.

A decode's abort is acknowledged (AbortAckMsg) once the room's writes already queued on its
transfer worker have finished or been dropped: later ones are dropped because the room is
Failed (or unknown, then recorded as an early abort). Only then may the decode reuse the pages.

A room already in flight here is refused to a second sender (``add_sender`` returns False) and
to a second decode's destination: the first request goes on untouched.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from sglang.srt.disaggregation.base.conn import ABORTED, KVPoll
from sglang.srt.disaggregation.common import faults
from sglang.srt.disaggregation.common.decode_peers import DecodePeers
from sglang.srt.disaggregation.common.messages import AbortMsg, MetadataMsg
from sglang.srt.disaggregation.common.room_table import (
    RoomTable,
    SenderRoom,
    TransferInfo,
    add_destination,
)
from sglang.srt.disaggregation.common.transfer_worker import Dest, TransferJob, TransferWorkers
from sglang.srt.env import envs

if TYPE_CHECKING:
    from sglang.srt.disaggregation.common.manager import CommonKVManager

logger = logging.getLogger(__name__)


class PrefillSide:
    def __init__(self, mgr: CommonKVManager):
        self.mgr = mgr
        self.rooms: RoomTable[SenderRoom] = RoomTable()
        self.lock = self.rooms.lock
        self.decodes = DecodePeers(mgr, self.lock)
        self.infos: dict[int, list[TransferInfo]] = {}  # room -> its destinations (TP: several)
        self.early_aborts: dict[int, tuple[float, str]] = {}
        self.recent_failures: dict[int, tuple[float, str]] = {}  # cleared rooms that failed
        self._last_purge = time.monotonic()
        self.workers = TransferWorkers(mgr, self, envs.transfer_threads)
        self._timeout_warned = False

    # ---- control-plane handlers (control thread) -----------------------------------------
    def on_metadata(self, msg: MetadataMsg) -> None:
        if msg.peer not in self.decodes:
            reason = (
                f"prefill instance {self.mgr.endpoint} does not know decode {msg.peer} "
                f"(the prefill restarted?); the decode re-registers for its next request"
            )
            logger.warning("Request %d: %s", msg.room, reason)
            self.decodes.send_status(msg.peer, msg.room, KVPoll.Failed, reason, reregister=True)
            return
        info = TransferInfo(msg.peer, msg.pages().copy(), msg.dst_aux_index, msg.expected_dsts,
                            msg.staged and bool(self.decodes.peers[msg.peer].stage_ptrs))
        with self.lock:
            dsts, old = add_destination(self.infos, msg.room, info)
            complete = len(dsts) == dsts[0].expected
        if old is not None:  # another request's (or a forged) claim on a room in flight
            reason = (f"bootstrap_room {msg.room} is already in flight on prefill "
                      f"{self.mgr.endpoint} (destination from decode {old.peer}); refused as a "
                      f"duplicate")
            logger.warning("Request %d: decode %s: %s", msg.room, msg.peer, reason)
            if old.peer != msg.peer:
                self.decodes.send_status(msg.peer, msg.room, KVPoll.Failed, reason)
            return
        with self.lock:
            st = self.rooms.get(msg.room)
            reason = st.reason if st is not None and st.status == KVPoll.Failed else ""
            if msg.room in self.recent_failures:
                reason = self.recent_failures[msg.room][1]
            if not reason and complete:
                self.rooms.set_status(msg.room, KVPoll.WaitingForInput)
        if reason:  # this room already failed here: tell the decode now
            if self.rooms.get(msg.room) is None:
                with self.lock:
                    self.infos.pop(msg.room, None)
            self.decodes.send_status(msg.peer, msg.room, KVPoll.Failed, reason)
            return
        logger.debug(
            "Request %d: decode %s wants %d pages, aux row %d (%d of %d destinations)",
            msg.room, msg.peer, len(info.dst_pages), msg.dst_aux_index, len(dsts),
            info.expected,
        )
        self._purge_stale()

    def on_abort(self, msg: AbortMsg) -> None:
        if msg.reason in ("", ABORTED):  # a client's abort on the decode: 499 on both sides
            reason = f"{ABORTED} (by the decode instance {msg.peer})"
        else:  # the decode failed the request: a failure here too, not an abort
            reason = f"the decode instance {msg.peer} failed the request: {msg.reason}"
        dsts = self.infos.get(msg.room)
        peers = [d.peer for d in dsts] if dsts else []
        if msg.peer not in self.decodes or (dsts and msg.peer not in peers):
            # a stranger's abort, or one for another decode's room: neither may touch it
            logger.warning("Request %d: abort from decode %s ignored (%s)", msg.room, msg.peer,
                           "not registered" if not dsts or msg.peer not in self.decodes
                           else f"the room's decode is {peers[0]}")
            return
        with self.lock:
            self.infos.pop(msg.room, None)
            if self.rooms.get(msg.room) is None:
                self.early_aborts[msg.room] = (time.monotonic(), reason)
            elif self.rooms.set_status(msg.room, KVPoll.Failed, reason):
                logger.info("Request %d: %s", msg.room, reason)
        for other in peers:  # the room's other decode ranks: their prefill part failed too
            if other != msg.peer:
                self.decodes.send_status(other, msg.room, KVPoll.Failed, reason)
        self.workers.after_pending(msg.room, lambda: self.decodes.ack_abort(msg.peer, msg.room))

    # ---- sender API (scheduler thread) ---------------------------------------------------
    def add_sender(self, room: int, bootstrap_addr: str) -> bool:
        """Track a new room; False (and nothing changed) if the room is already in flight."""
        fails = envs.test_failure_prob > 0 and faults.request_fails()  # test only
        st = SenderRoom(room, bootstrap_addr, inject_failure=fails)
        with self.lock:
            if self.rooms.get(room) is not None:
                logger.warning("Request %d: refused, bootstrap_room already in flight", room)
                return False
            early = self.early_aborts.pop(room, None)
            if early is not None:
                st.status, st.reason = KVPoll.Failed, early[1]
            elif self._first(room) is not None:
                st.status = KVPoll.WaitingForInput
            self.rooms.add(st)
        return True

    def _first(self, room: int) -> Optional[TransferInfo]:
        """The room's first destination once all of them arrived, else None."""
        dsts = self.infos.get(room)
        return dsts[0] if dsts and len(dsts) == dsts[0].expected else None

    def init_room(self, room: int, num_pages: int, aux_index: int) -> None:
        st = self.rooms.get(room)
        if st is None or st.status == KVPoll.Failed:
            return
        info = self._first(room)
        if info is None:
            self.fail(room, "init() called before the decode's destination pages arrived")
            return
        if num_pages != len(info.dst_pages):
            self.fail(
                room,
                f"prefill will send {num_pages} pages but decode {info.peer} allocated "
                f"{len(info.dst_pages)}; both must count pages of the same prompt",
                notify=True,
            )
            return
        st.num_pages, st.aux_index = num_pages, aux_index

    def send(self, room: int, pages: np.ndarray, last_chunk: bool) -> None:
        with self.lock:
            st = self.rooms.get(room)
            if st is None or st.status == KVPoll.Failed:
                return
            info = self._first(room)
            src = np.asarray(pages, dtype=np.int32).reshape(-1)
            problem = st.check_send(info, len(src), last_chunk)
            if problem is None:
                assert info is not None
                start = st.sent_pages
                st.sent_pages += len(src)
                st.queued_last = last_chunk
                self.rooms.set_status(room, KVPoll.Transferring)
                job = TransferJob(
                    room=room,
                    dsts=[Dest(d.peer, d.dst_pages[start : start + len(src)], d.dst_aux_index,
                               d.staged) for d in self.infos[room]],
                    src_pages=src,
                    last_chunk=last_chunk,
                    aux_index=st.aux_index if st.aux_index is not None else -1,
                )
        if problem is not None:
            self.fail(room, problem, notify=True)
            return
        self.workers.submit(job)

    def poll(self, room: int) -> KVPoll:
        st = self.rooms.get(room)
        if st is None:
            return KVPoll.Failed
        if st.status == KVPoll.Bootstrapping:
            waited = time.monotonic() - st.created
            if waited > envs.bootstrap_timeout:
                self._bootstrap_timeout(room, waited)
        elif st.inject_failure and st.status not in (KVPoll.Success, KVPoll.Failed):
            self.fail(room, faults.INJECTED_REQUEST, True)
        return st.status

    def _bootstrap_timeout(self, room: int, waited: float) -> None:
        self.fail(
            room,
            f"Request {room} timed out after {waited:.1f}s in KVPoll.Bootstrapping: the decode "
            f"never sent its destination pages (is it up, and sent the same request?)",
        )
        if not self._timeout_warned:
            self._timeout_warned = True
            logger.warning(
                "If decode instances are just slow to admit requests, raise the limit, e.g. "
                "export SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT=600"
            )

    def abort(self, room: int) -> None:
        self.fail(room, ABORTED, notify=True)

    def clear(self, room: int) -> None:
        with self.lock:
            st = self.rooms.pop(room)
            info = self.infos.pop(room, None)
            if st is not None and st.status == KVPoll.Failed and info is None:
                # the decode may not have sent its pages yet: answer them with this failure
                self.recent_failures[room] = (time.monotonic(), st.reason)

    def fail(self, room: int, reason: str, notify: bool = False) -> None:
        """Room -> Failed; with ``notify`` also tell its decode (if known and reachable)."""
        if not self.rooms.set_status(room, KVPoll.Failed, reason):
            return
        logger.warning("Request %d failed: %s", room, reason)
        if notify:
            for info in list(self.infos.get(room) or ()):
                self.decodes.send_status(info.peer, room, KVPoll.Failed, reason)

    def metric(self, room: int) -> dict[str, Any]:
        st = self.rooms.get(room)
        return {} if st is None else st.metric()

    def _purge_stale(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < 10.0:
            return
        self._last_purge = now
        limit = envs.bootstrap_timeout
        with self.lock:
            for room in [r for r, i in self.infos.items() if now - i[0].received > limit]:
                if self.rooms.get(room) is None:
                    del self.infos[room]
            for table in (self.early_aborts, self.recent_failures):
                for room in [r for r, (t, _) in table.items() if now - t > limit]:
                    del table[room]

    def close(self) -> None:
        self.decodes.close()
        self.workers.close()
