"""KVSender and KVReceiver of the Mooncake and NIXL backends: thin per-request handles on the
manager's PrefillSide / DecodeSide, which hold all state."""

from __future__ import annotations

from typing import Any

import numpy as np

from sglang.srt.disaggregation.base.conn import (
    BaseKVManager,
    BaseKVReceiver,
    BaseKVSender,
    KVPoll,
    KVTransferError,
)
from sglang.srt.disaggregation.common.decode_side import DecodeSide
from sglang.srt.disaggregation.common.manager import CommonKVManager
from sglang.srt.disaggregation.common.prefill_side import PrefillSide


def _duplicate(room: int, where: str) -> str:
    return (f"bootstrap_room {room} is already in flight on this {where} server: refused as a "
            f"duplicate (give every request its own bootstrap_room)")


def _reason(st: Any, room: int) -> str:
    if st is None:
        return f"request {room} is unknown to the KV manager (cleared?)"
    return st.reason or "Failed due to an unknown reason"


class CommonKVSender(BaseKVSender):
    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int):
        assert isinstance(mgr, CommonKVManager) and mgr.prefill is not None, "prefill manager"
        self.mgr = mgr
        self.side: PrefillSide = mgr.prefill
        self.bootstrap_addr = bootstrap_addr
        self.bootstrap_room = bootstrap_room
        # A duplicate of a room in flight fails at once and never touches the room's state.
        self.duplicate = not self.side.add_sender(bootstrap_room, bootstrap_addr)

    def init(self, num_pages: int, aux_index: int) -> None:
        if not self.duplicate:
            self.side.init_room(self.bootstrap_room, num_pages, aux_index)

    def send(self, page_indices: np.ndarray, last_chunk: bool) -> None:
        if not self.duplicate:
            self.side.send(self.bootstrap_room, page_indices, last_chunk)

    def poll(self) -> KVPoll:
        return KVPoll.Failed if self.duplicate else self.side.poll(self.bootstrap_room)

    def failure_exception(self) -> Exception:
        if self.duplicate:
            return KVTransferError(self.bootstrap_room, _duplicate(self.bootstrap_room, "prefill"))
        st = self.side.rooms.get(self.bootstrap_room)
        return KVTransferError(self.bootstrap_room, _reason(st, self.bootstrap_room))

    def abort(self) -> None:
        if not self.duplicate:
            self.side.abort(self.bootstrap_room)

    def clear(self) -> None:
        if not self.duplicate:
            self.side.clear(self.bootstrap_room)

    def get_transfer_metric(self) -> dict[str, Any]:
        return {} if self.duplicate else self.side.metric(self.bootstrap_room)


class CommonKVReceiver(BaseKVReceiver):
    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int):
        assert isinstance(mgr, CommonKVManager) and mgr.decode is not None, "decode manager"
        self.mgr = mgr
        self.side: DecodeSide = mgr.decode
        self.bootstrap_addr = bootstrap_addr
        self.bootstrap_room = bootstrap_room
        self.duplicate = not self.side.add_receiver(bootstrap_room, bootstrap_addr)

    def send_metadata(self, page_indices: np.ndarray, aux_index: int) -> None:
        if not self.duplicate:
            self.side.send_metadata(self.bootstrap_room, page_indices, aux_index)

    def poll(self) -> KVPoll:
        return KVPoll.Failed if self.duplicate else self.side.poll(self.bootstrap_room)

    def failure_exception(self) -> Exception:
        if self.duplicate:
            return KVTransferError(self.bootstrap_room, _duplicate(self.bootstrap_room, "decode"))
        st = self.side.rooms.get(self.bootstrap_room)
        return KVTransferError(self.bootstrap_room, _reason(st, self.bootstrap_room))

    def abort(self) -> None:
        if not self.duplicate:
            self.side.abort(self.bootstrap_room)

    def clear(self) -> None:
        if not self.duplicate:
            self.side.clear(self.bootstrap_room)

    def writes_drained(self) -> bool:
        # a duplicate never sent pages anywhere
        return self.duplicate or self.side.writes_drained(self.bootstrap_room)
