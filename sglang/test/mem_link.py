"""An in-memory transfer backend joining a prefill and a decode scheduler in one process.

A test drives it event by event: ``connect`` (the decode's handshake succeeds), ``deliver``
(the writes queued so far land: KV pages and the metadata row are copied byte for byte between
the two pools, as a transfer engine would; the last one completes the room on both sides),
``fail`` (the transfer fails on both sides), ``flush`` (writes still queued for a room whose
decode gave up are dropped: the prefill acknowledged), ``lose_peer`` (heartbeats lost: every
open room fails on both sides and nothing more lands). Plug it in with
``make_pd_layer(ctx, link.connect_fn)``.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from sglang.srt.disaggregation.base.conn import (
    ABORTED,
    BaseKVReceiver,
    BaseKVSender,
    KVArgs,
    KVPoll,
    KVTransferError,
)

_FINAL = (KVPoll.Success, KVPoll.Failed)


@dataclass
class Room:
    room: int
    sender: Optional["LinkSender"] = None
    receiver: Optional["LinkReceiver"] = None
    dst_pages: Optional[np.ndarray] = None
    dst_slot: Optional[int] = None
    src_slot: Optional[int] = None
    next_dst: int = 0
    pending: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (src, dst)
    last_sent: bool = False
    decode_gone: bool = False  # the decode failed or aborted this room
    prefill_gone: bool = False


class MemLink:
    def __init__(self) -> None:
        self.rooms: dict[int, Room] = {}
        self.args: dict[str, KVArgs] = {}
        self.dead = False

    # ---- the connector the PD layers use ------------------------------------------------
    def connect_fn(self, backend: str, kv_args: KVArgs, mode: str) -> "LinkConnector":
        self.args[mode] = kv_args
        return LinkConnector(self, mode)

    def _room(self, room: int) -> Room:
        return self.rooms.setdefault(room, Room(room))

    # ---- events -------------------------------------------------------------------------
    def connect(self, room: int) -> None:
        r = self.rooms.get(room)
        if r and r.receiver and r.receiver.status == KVPoll.Bootstrapping:
            r.receiver.status = KVPoll.WaitingForInput

    def deliver(self, room: int) -> None:
        r = self.rooms.get(room)
        if r is None or not r.pending:
            return
        src, dst = self.args["prefill"], self.args["decode"]
        for s_pages, d_pages in r.pending:
            for sp, dp in zip(s_pages.tolist(), d_pages.tolist()):
                for s_ptr, d_ptr in zip(src.kv_data_ptrs, dst.kv_data_ptrs):
                    ctypes.memmove(d_ptr + dp * dst.kv_item_len, s_ptr + sp * src.kv_item_len,
                                   src.kv_item_len)
        r.pending.clear()
        if r.last_sent and r.dst_slot is not None:
            for s_ptr, d_ptr, n in zip(src.aux_data_ptrs, dst.aux_data_ptrs, src.aux_item_lens):
                ctypes.memmove(d_ptr + r.dst_slot * n, s_ptr + r.src_slot * n, n)
            for side in (r.sender, r.receiver):
                if side is not None and side.status not in _FINAL:
                    side.status = KVPoll.Success

    def fail(self, room: int, reason: str = "injected transfer failure") -> None:
        r = self.rooms.get(room)
        if r is None:
            return
        r.pending.clear()
        r.decode_gone = r.prefill_gone = True
        for side in (r.sender, r.receiver):
            if side is not None:
                side.set_failed(reason)

    def flush(self, room: int) -> None:
        r = self.rooms.get(room)
        if r is not None and (r.decode_gone or r.prefill_gone):
            r.pending.clear()
            if r.sender is None and r.receiver is None:
                del self.rooms[room]

    def timeout(self, room: int) -> None:
        """The decode's waiting (or bootstrap) timeout passes for this room."""
        r = self.rooms.get(room)
        if r is not None and r.receiver is not None:
            r.receiver.set_failed("timed out waiting for the KV")

    def open_rooms(self) -> list[int]:
        """Rooms a sender or receiver still holds."""
        return [k for k, r in self.rooms.items() if r.sender or r.receiver]

    def lose_peer(self) -> None:
        for room in list(self.rooms):
            self.fail(room, "peer lost (heartbeat)")

    def pending_dst_pages(self) -> set[int]:
        return {p for r in self.rooms.values() for _, d in r.pending for p in d.tolist()}


class LinkConnector:
    def __init__(self, link: MemLink, mode: str):
        self.link, self.mode = link, mode

    def sender(self, host: Any, port: Any, room: int) -> "LinkSender":
        return LinkSender(self.link, room)

    def receiver(self, host: Any, port: Any, room: int) -> "LinkReceiver":
        return LinkReceiver(self.link, room)

    def describe(self) -> dict[str, Any]:
        return {"backend": "memlink"}

    def shutdown(self) -> None:
        pass


class _Side:
    def __init__(self, link: MemLink, room: int):
        self.link, self.room_id = link, room
        self.status, self.reason = KVPoll.Bootstrapping, ""

    @property
    def r(self) -> Room:
        return self.link._room(self.room_id)

    def set_failed(self, reason: str) -> None:
        if self.status not in _FINAL:
            self.status, self.reason = KVPoll.Failed, reason

    def failure_exception(self) -> Exception:
        return KVTransferError(self.room_id, self.reason or "failed")

    def clear(self) -> None:
        r = self.link.rooms.get(self.room_id)
        if r is None:
            return
        if r.sender is self:
            r.sender = None
        if r.receiver is self:
            r.receiver = None
        if r.sender is None and r.receiver is None and not r.pending:
            del self.link.rooms[self.room_id]


class LinkSender(_Side, BaseKVSender):
    def __init__(self, link: MemLink, room: int):
        _Side.__init__(self, link, room)
        if self.r.sender is not None:
            self.set_failed(f"bootstrap_room {room} is already in flight")
        else:
            self.r.sender = self

    def init(self, num_pages: int, aux_index: int) -> None:
        self.r.src_slot = aux_index

    def send(self, page_indices: np.ndarray, last_chunk: bool) -> None:
        r = self.r
        if self.status in _FINAL or r.dst_pages is None:
            return
        n = len(page_indices)
        r.pending.append((np.array(page_indices), r.dst_pages[r.next_dst : r.next_dst + n]))
        r.next_dst += n
        r.last_sent = r.last_sent or last_chunk
        self.status = KVPoll.Transferring

    def poll(self) -> KVPoll:
        r = self.r
        if r.decode_gone:
            self.set_failed("the decode aborted or failed the request")
        elif self.status == KVPoll.Bootstrapping and r.dst_pages is not None:
            self.status = KVPoll.WaitingForInput
        return self.status

    def abort(self) -> None:
        self.set_failed(ABORTED)
        self.r.prefill_gone = True


class LinkReceiver(_Side, BaseKVReceiver):
    def __init__(self, link: MemLink, room: int):
        _Side.__init__(self, link, room)
        self.r.receiver = self

    def send_metadata(self, page_indices: np.ndarray, aux_index: int) -> None:
        r = self.r
        r.dst_pages, r.dst_slot = np.array(page_indices), aux_index

    def poll(self) -> KVPoll:
        if self.r.prefill_gone:
            self.set_failed("the prefill aborted or failed the request")
        return self.status

    def abort(self) -> None:
        self.set_failed(ABORTED)
        self.r.decode_gone = True

    def set_failed(self, reason: str) -> None:
        super().set_failed(reason)
        if self.status == KVPoll.Failed:
            self.r.decode_gone = True

    def writes_drained(self) -> bool:
        """As the real backends: the prefill can no longer write into the pages it was given
        once it has no write queued and its sender has ended (it saw the abort, or finished)."""
        r = self.link.rooms.get(self.room_id)
        if r is None or r.dst_pages is None:
            return True
        return not r.pending and (r.sender is None or r.sender.status in _FINAL)
