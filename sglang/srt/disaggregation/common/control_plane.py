"""ZMQ control plane of one manager: one PULL socket with its reader thread, and cached PUSH
sockets to peers. Sends are thread-safe and never block (a full or dead peer drops the
message and the send reports False). At most MAX_PEERS sockets stay cached (least recently
used closed first), so messages naming many made-up peers cannot exhaust file descriptors.

The PULL socket binds where the server's --host says (every interface for a wildcard) and is
advertised as ``host`` (the manager's advertised address: --host itself, or this machine's
routable IP for a wildcard). It has no authentication: every message is validated
(messages.decode) and a peer can only touch rooms it owns.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Optional

import zmq

from sglang.srt.disaggregation.common import messages
from sglang.srt.disaggregation.common.messages import Message
from sglang.srt.utils.network import bind_host, bracket_host

logger = logging.getLogger(__name__)

MAX_PEERS = 256


class ControlPlane:
    def __init__(self, host: str, on_message: Callable[[Message], None],
                 bind: Optional[str] = None):
        """``host``: the address peers are told; ``bind``: the server's --host (default
        ``host``)."""
        self.host = host
        self._on_message = on_message
        self._ctx = zmq.Context()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, messages.MAX_FRAME)  # bigger: peer disconnected
        where = bind_host(host if bind is None else bind)
        if ":" in where:
            self._pull.setsockopt(zmq.IPV6, 1)
        self.port = self._pull.bind_to_random_port(f"tcp://{bracket_host(where)}")
        self.endpoint = f"{bracket_host(host)}:{self.port}"
        self._push: OrderedDict[str, zmq.Socket] = OrderedDict()
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kv-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, endpoint: str, msg: Message) -> bool:
        """Queue ``msg`` for ``endpoint`` ("ip:port"); False if it could not be queued."""
        frame = messages.encode(msg)
        with self._send_lock:
            if self._stop.is_set():
                return False
            sock = self._push.get(endpoint)
            if sock is None:
                sock = self._ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 10000)
                try:
                    sock.connect(f"tcp://{endpoint}")
                except zmq.ZMQError as e:
                    sock.close(linger=0)
                    logger.warning("control message to %s dropped: %s", endpoint, e)
                    return False
                self._push[endpoint] = sock
                while len(self._push) > MAX_PEERS:
                    self._push.popitem(last=False)[1].close(linger=0)
            else:
                self._push.move_to_end(endpoint)
            try:
                sock.send(frame, flags=zmq.NOBLOCK)
                return True
            except zmq.ZMQError as e:
                logger.warning("control message to %s dropped: %s", endpoint, e)
                return False

    def forget(self, endpoint: str) -> None:
        """Close the cached socket to a peer that died (a restarted one gets a fresh one)."""
        with self._send_lock:
            sock = self._push.pop(endpoint, None)
            if sock is not None:
                sock.close(linger=0)

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(100):
                    continue
                frame = self._pull.recv(flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                if self._stop.is_set():
                    return
                continue
            try:
                msg = messages.decode(frame)
            except ValueError as e:  # garbage from anyone who can reach the port
                logger.warning("control message of %d bytes refused: %s", len(frame), e)
                continue
            try:
                self._on_message(msg)
            except Exception:  # a bad message must not kill the control thread
                logger.exception("error while handling a %s message from %s", msg.T, msg.peer)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=2)
        with self._send_lock:
            for sock in self._push.values():
                sock.close(linger=0)
            self._push.clear()
        self._pull.close(linger=0)
        self._ctx.term()
