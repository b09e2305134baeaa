"""Prefill side: the decodes this prefill rank knows, and the messages it sends them.

A decode registers its memory (RegisterMsg) at its handshake: the registration is checked
against this rank's TP layout (tp_layout.slice_problem; a bad one is refused and logged), and the
backend makes the decode writable (``add_peer``; the same decode registering again keeps its
engine state, a changed one is replaced). A decode a write to which failed is marked in
``failed`` (peer_probe.py) until it answers a probe or registers again.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from sglang.srt.disaggregation.base.conn import KVPoll
from sglang.srt.disaggregation.common.messages import (
    AbortAckMsg,
    PongMsg,
    RegisterMsg,
    StatusMsg,
)
from sglang.srt.disaggregation.common.peer_probe import PeerProbe
from sglang.srt.disaggregation.common.room_table import PeerInfo
from sglang.srt.disaggregation.common.tp_layout import slice_problem

if TYPE_CHECKING:
    from sglang.srt.disaggregation.common.manager import CommonKVManager

logger = logging.getLogger(__name__)


class DecodePeers:
    def __init__(self, mgr: CommonKVManager, lock: threading.RLock):
        self.mgr = mgr
        self.lock = lock  # the room table's: writers hold it, readers look up lock-free
        self.peers: dict[str, PeerInfo] = {}  # control endpoint -> registration
        self.failed = PeerProbe(mgr.endpoint, mgr.control.send)

    def __contains__(self, peer: str) -> bool:
        return peer in self.peers

    def on_register(self, msg: RegisterMsg) -> None:
        peer = PeerInfo.of(msg)
        problem = slice_problem(self.mgr.args, self.mgr.tp_info()["num_local_kv_heads"], msg)
        if problem is not None:
            logger.error("Refusing decode %s: %s", msg.peer, problem)
            return
        old = self.peers.get(msg.peer)
        if old is not None and old.transfer == peer.transfer:
            peer.handle = old.handle  # the same decode again: keep its engine state
        else:
            if old is not None:
                self.mgr.remove_peer(old)
            self.mgr.add_peer(peer)
        with self.lock:
            self.peers[msg.peer] = peer
        self.failed.restore(msg.peer, "it registered again")
        shown = {k: v for k, v in peer.transfer.items() if not isinstance(v, bytes)}
        logger.info("Decode %s registered its KV memory (%s)", msg.peer, shown)

    def on_pong(self, msg: PongMsg) -> None:
        if msg.peer in self.peers:
            self.failed.restore(msg.peer, "it answered a probe")

    def send_status(
        self, peer: str, room: int, status: KVPoll, reason: str = "", reregister: bool = False
    ) -> bool:
        msg = StatusMsg(self.mgr.endpoint, room, int(status), reason, reregister)
        return self.mgr.control.send(peer, msg)

    def ack_abort(self, peer: str, room: int) -> None:
        if self.mgr.control.send(peer, AbortAckMsg(self.mgr.endpoint, room)):
            logger.debug("Request %d: abort acknowledged to %s", room, peer)

    def close(self) -> None:
        self.failed.close()
