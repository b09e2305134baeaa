"""The scheduler process's loop around ``Scheduler.step``, and its sockets.

Each iteration: take the messages that arrived, handle them, run one step, send the outputs and
(``--enable-metrics``) a stats snapshot. With ``--tp-size`` N only rank 0 has sockets: it reads
what the tokenizer manager sent and broadcasts it to the other ranks, which then handle the same
messages the same way; only rank 0 sends. The watchdog ends a step that hangs; a scheduler whose
parent (the launcher) died exits. In-process tests drive ``handle``/``step`` without this loop.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, Optional

import zmq

from sglang.srt.distributed import broadcast_objects
from sglang.srt.managers.io_struct import BatchReqOutput
from sglang.srt.managers.watchdog import Watchdog

if TYPE_CHECKING:
    from sglang.srt.managers.scheduler import Scheduler

logger = logging.getLogger(__name__)


class SchedulerLoopMixin:
    _send_sock: Optional[zmq.Socket]

    def run(self: "Scheduler", recv: Optional[zmq.Socket], send: Optional[zmq.Socket]) -> None:
        """The loop; ``recv``/``send`` are None on TP ranks other than 0."""
        self._send_sock = send
        poller = zmq.Poller()
        if recv is not None:
            poller.register(recv, zmq.POLLIN)
        parent = os.getppid()
        last_parent_check = time.monotonic()
        watchdog = Watchdog(self.args.watchdog_timeout)
        while True:
            busy = self.busy()
            for msg in self._receive(poller, recv, 0 if busy else 50):
                self.handle(msg)
            watchdog.step_begin()
            ran = self.step()
            self.flush_outbox()
            self.metrics.maybe_push(self.gauges, self.send)
            watchdog.step_end()
            if not ran and busy:
                time.sleep(0.001)
            now = time.monotonic()
            if now - last_parent_check > 1.0:
                last_parent_check = now
                if os.getppid() != parent:
                    logger.warning("parent process died; scheduler exits")
                    return

    def _receive(self, poller: zmq.Poller, recv: Optional[zmq.Socket], timeout: int) -> list:
        """Rank 0: what arrived within ``timeout`` ms, broadcast to the other ranks (tp > 1)."""
        msgs = []
        while recv is not None and dict(poller.poll(timeout)).get(recv):
            msgs.append(recv.recv_pyobj())
            timeout = 0
        return broadcast_objects(msgs if recv is not None else None)

    def send(self, obj: Any) -> None:
        if self._send_sock is not None:  # TP ranks other than 0 send nothing
            self._send_sock.send_pyobj(obj)

    def flush_outbox(self: "Scheduler") -> None:
        if self.outbox:
            self.send(BatchReqOutput(self.outbox))
            self.outbox = []
