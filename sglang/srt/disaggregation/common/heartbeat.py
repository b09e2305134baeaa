"""Decode heartbeat: GET /health on every connected prefill's bootstrap server each
SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL seconds. A prefill is declared lost after
SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE misses in a row, or at once when its bootstrap
server answers with a new instance id (it restarted, so it no longer knows this decode)."""

from __future__ import annotations

import logging
import threading
from typing import Callable

from sglang.srt.disaggregation.common.handshake import check_health
from sglang.srt.env import envs

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(
        self,
        targets: Callable[[], dict[str, str]],
        on_lost: Callable[[str, str], None],
    ):
        """``targets()``: bootstrap addr -> instance id seen at handshake;
        ``on_lost(addr, why)`` is called from the heartbeat thread."""
        self._targets = targets
        self._on_lost = on_lost
        self._misses: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kv-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(envs.heartbeat_interval):
            targets = self._targets()
            for addr in list(self._misses):
                if addr not in targets:
                    del self._misses[addr]
            for addr, instance in targets.items():
                if self._stop.is_set():
                    return
                self._check(addr, instance)

    def _check(self, addr: str, instance: str) -> None:
        seen = check_health(addr, timeout=2.0)  # a dead host refuses at once; a busy one is slow
        if seen is not None:
            self._misses[addr] = 0
            if instance and seen and seen != instance:
                self._lost(addr, "it restarted")
            return
        self._misses[addr] = self._misses.get(addr, 0) + 1
        limit = envs.heartbeat_max_failure
        logger.warning("Prefill %s missed heartbeat %d/%d", addr, self._misses[addr], limit)
        if self._misses[addr] >= limit:
            self._lost(addr, f"{limit} heartbeats missed")

    def _lost(self, addr: str, why: str) -> None:
        self._misses.pop(addr, None)
        try:
            self._on_lost(addr, why)
        except Exception:
            logger.exception("error while dropping prefill %s", addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)
