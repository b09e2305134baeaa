"""``--dp-size N``: the DataParallelController, which sends each message of the HTTP process to
the scheduler replicas (SGLang's name; here it lives in the TokenizerManager's send path).

Every replica is a full TP group whose rank 0 pulls from its own ZMQ address; all of them push
their outputs to the one socket the TokenizerManager binds. A new request goes to one replica:
``round_robin``, or ``follow_bootstrap_room`` (replica ``bootstrap_room % N``, so a PD decode can
compute which prefill replica holds a request; a request without a room falls back to round
robin). Aborts go to every replica (one that does not hold the rid ignores it); RPCs go to the
replica they name. With ``--dp-size 1`` this is a plain PUSH socket to the one scheduler.
"""

from __future__ import annotations

from typing import Any, Optional

import zmq

from sglang.srt.managers.io_struct import AbortReq, TokenizedGenerateReqInput


def pick_replica(method: str, room: Optional[int], counter: int, dp_size: int) -> int:
    """The replica of one request: ``room % dp_size`` when following the bootstrap room and the
    request has one, else ``counter % dp_size`` (round robin)."""
    if method == "follow_bootstrap_room" and room is not None:
        return room % dp_size
    return counter % dp_size


class DataParallelController:
    def __init__(self, send_addrs: list[str], method: str = "round_robin"):
        if not send_addrs:
            raise ValueError("the DataParallelController needs at least one scheduler address")
        self.addrs = list(send_addrs)
        self.method = method
        self._socks: list[Any] = []
        self._rr = 0
        self.dispatched = [0] * len(self.addrs)  # requests sent to each replica

    @property
    def dp_size(self) -> int:
        return len(self.addrs)

    def connect(self, ctx: Any) -> None:
        """One PUSH socket per replica (``ctx``: a zmq.asyncio context)."""
        for addr in self.addrs:
            sock = ctx.socket(zmq.PUSH)
            sock.connect(addr)
            self._socks.append(sock)

    def pick(self, room: Optional[int]) -> int:
        d = pick_replica(self.method, room, self._rr, self.dp_size)
        if self.method != "follow_bootstrap_room" or room is None:
            self._rr += 1
        return d

    async def send_request(self, req: TokenizedGenerateReqInput) -> int:
        """Send a new request to its replica; returns that replica's DP rank."""
        d = self.pick(req.bootstrap_room)
        await self._socks[d].send_pyobj(req)
        self.dispatched[d] += 1
        return d

    def send_abort(self, abort: AbortReq) -> None:
        for sock in self._socks:
            sock.send_pyobj(abort, flags=zmq.NOBLOCK)

    async def send_to(self, dp_rank: int, obj: Any) -> None:
        await self._socks[dp_rank].send_pyobj(obj)
