"""Per-room state of a manager: status, failure reason, and side-specific fields.

Status only moves forward through KVPoll; Failed overrides anything but Success and then
sticks. Reads are lock-free (a dict lookup and an attribute), so ``poll()`` stays cheap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Generic, Optional, TypeVar

import numpy as np

from sglang.srt.disaggregation.base.conn import KVPoll


@dataclass
class RoomState:
    room: int
    bootstrap_addr: str
    status: KVPoll = KVPoll.Bootstrapping
    reason: str = ""
    created: float = field(default_factory=time.monotonic)
    status_since: float = field(default_factory=time.monotonic)
    inject_failure: bool = False  # SGLANG_TEST_DISAGG_FAILURE_PROB drew this request


@dataclass
class SenderRoom(RoomState):
    """Prefill side of a room."""

    num_pages: Optional[int] = None
    aux_index: Optional[int] = None
    sent_pages: int = 0  # running offset into the decode's destination pages
    queued_last: bool = False
    bytes: int = 0
    blocks: int = 0
    t_first: Optional[float] = None
    t_done: Optional[float] = None

    def check_send(self, info: Optional["TransferInfo"], n: int, last_chunk: bool) -> Optional[str]:
        """Why sending ``n`` more pages (``last_chunk`` or not) is wrong, or None."""
        if info is None:
            return "send() called before the decode's destination pages arrived"
        if self.queued_last:
            return "send() called after the last chunk"
        total = len(info.dst_pages)
        if self.sent_pages + n > total:
            return f"prefill sent {self.sent_pages + n} pages but the decode allocated only {total}"
        if last_chunk and self.sent_pages + n != total:
            return (f"prefill sent {self.sent_pages + n} pages in all but the decode allocated "
                    f"{total}")
        if last_chunk and self.aux_index is None:
            return "last chunk sent before init() gave the metadata row"
        return None

    def metric(self) -> dict[str, Any]:
        if self.t_first is None:
            return {}
        end = self.t_done if self.t_done is not None else time.monotonic()
        secs = max(end - self.t_first, 1e-9)
        return {"bytes": self.bytes, "blocks": self.blocks, "pages": self.sent_pages,
                "seconds": secs, "gbps": self.bytes / secs / 1e9}


@dataclass
class ReceiverRoom(RoomState):
    """Decode side of a room."""

    prefill_endpoint: str = ""  # prefill rank 0's manager (PULL endpoint), after handshake
    # Every prefill rank this decode rank takes heads from: endpoint -> how many decode ranks it
    # serves (tp_layout.py; one entry, expecting 1, for same-TP pairs).
    sources: dict[str, int] = field(default_factory=dict)
    succeeded: set[str] = field(default_factory=set)  # sources that reported Success
    acked: set[str] = field(default_factory=set)  # sources that will not write any more
    staged: dict[str, tuple[int, int]] = field(default_factory=dict)  # source -> (dst_head, n)
    dst_pages: Optional[np.ndarray] = None  # the pool pages given to send_metadata
    metadata_sent_at: Optional[float] = None
    num_pages: int = 0
    # The prefill will not write into this room's pages any more (it acknowledged the abort,
    # or said it never took them).
    writes_drained: bool = False


@dataclass
class TransferInfo:
    """What a decode told the prefill about one room: where to write."""

    peer: str
    dst_pages: np.ndarray
    dst_aux_index: int
    expected: int = 1  # destinations (decode ranks) this room has on this prefill rank
    staged: bool = False  # dst_pages are the decode's staging pages (tp_staging.py)
    received: float = field(default_factory=time.monotonic)


@dataclass
class PeerInfo:
    """A decode manager as the prefill knows it, from its RegisterMsg."""

    endpoint: str  # the decode's PULL socket, "ip:port"
    engine_rank: int
    kv_ptrs: list[int]
    kv_item_len: int
    aux_ptrs: list[int]
    aux_item_lens: list[int]
    transfer: dict[str, Any]  # backend's own registration fields
    handle: Any = None  # backend's own handle (e.g. the NIXL remote agent name)
    # which heads go where (RegisterMsg; num_heads -1: whole pages, same layout)
    src_head: int = 0
    dst_head: int = 0
    num_heads: int = -1
    dst_num_heads: int = -1
    sends_aux: bool = True
    stage_ptrs: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, msg: Any) -> "PeerInfo":
        """From a RegisterMsg."""
        return cls(msg.peer, msg.engine_rank, list(msg.kv_ptrs), msg.kv_item_len,
                   list(msg.aux_ptrs), list(msg.aux_item_lens), msg.transfer,
                   src_head=msg.src_head, dst_head=msg.dst_head, num_heads=msg.num_heads,
                   dst_num_heads=msg.dst_num_heads, sends_aux=msg.sends_aux,
                   stage_ptrs=list(msg.stage_ptrs))


def add_destination(infos: dict[int, list[TransferInfo]], room: int,
                    info: TransferInfo) -> tuple[list[TransferInfo], Optional[TransferInfo]]:
    """Add a decode rank's destination to the room's (call under the lock); returns the room's
    destinations and, if ``info`` was refused (a second claim from the same decode, one more
    than expected, or one that disagrees with the first), the first destination."""
    dsts = infos.get(room)
    if dsts is None:
        infos[room] = [info]
        return infos[room], None
    first = dsts[0]
    if (any(d.peer == info.peer for d in dsts) or len(dsts) >= first.expected
            or info.expected != first.expected or len(info.dst_pages) != len(first.dst_pages)):
        return dsts, first
    dsts.append(info)
    return dsts, None


S = TypeVar("S", bound=RoomState)


class RoomTable(Generic[S]):
    def __init__(self) -> None:
        self._rooms: dict[int, S] = {}
        self.lock = threading.RLock()

    def add(self, state: S) -> S:
        with self.lock:
            self._rooms[state.room] = state
            return state

    def get(self, room: int) -> Optional[S]:
        return self._rooms.get(room)

    def pop(self, room: int) -> Optional[S]:
        with self.lock:
            return self._rooms.pop(room, None)

    def set_status(self, room: int, status: KVPoll, reason: str = "") -> bool:
        """Apply the transition if it is allowed; True if the status changed."""
        with self.lock:
            st = self._rooms.get(room)
            if st is None or st.status in (KVPoll.Failed, KVPoll.Success):
                return False
            if status != KVPoll.Failed and status <= st.status:
                return False
            st.status = status
            st.status_since = time.monotonic()
            if status == KVPoll.Failed:
                st.reason = reason
            return True
