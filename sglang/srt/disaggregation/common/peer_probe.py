"""Prefill side: decodes a write to which failed, and the probe that takes them back.

After a failed write the prefill fails later requests for that decode at once (it may be
dead) instead of waiting on it. A live decode never registers again, so a thread pings every
failed decode on its control socket (PingMsg) every SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL
seconds (at most 1 s); the decode answers PongMsg, and the prefill takes it back. A decode that
stays silent for SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT is no longer probed and stays failed
until it registers again (a restarted decode does).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from sglang.srt.disaggregation.common.messages import Message, PingMsg
from sglang.srt.env import envs

logger = logging.getLogger(__name__)


class PeerProbe:
    def __init__(self, own_endpoint: str, send: Callable[[str, Message], bool]):
        self._own = own_endpoint
        self._send = send
        self._failed: dict[str, float] = {}  # endpoint -> when its write failed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kv-peer-probe", daemon=True)
        self._thread.start()

    def __contains__(self, endpoint: object) -> bool:
        return endpoint in self._failed

    def mark_failed(self, endpoint: str) -> None:
        with self._lock:
            new = endpoint not in self._failed
            self._failed.setdefault(endpoint, time.monotonic())
        if new:
            logger.warning("Decode %s marked failed after a failed write; probing it", endpoint)
            self._wake.set()

    def restore(self, endpoint: str, why: str) -> bool:
        """Take ``endpoint`` back; True if it was failed."""
        with self._lock:
            was = self._failed.pop(endpoint, None) is not None
        if was:
            logger.info("Decode %s taken back: %s", endpoint, why)
        return was

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(min(envs.heartbeat_interval, 1.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            now, limit = time.monotonic(), envs.bootstrap_timeout
            with self._lock:
                targets = [e for e, t in self._failed.items() if now - t <= limit]
            for ep in targets:
                self._send(ep, PingMsg(self._own))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)
