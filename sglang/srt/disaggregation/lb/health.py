"""Which servers mini_lb may route to: background health checks and a per-server circuit
breaker, with sglang-router's flags and defaults.

- Health (``--health-check-interval-secs`` 60, ``--health-check-timeout-secs`` 5,
  ``--health-failure-threshold`` 3, ``--health-success-threshold`` 2,
  ``--health-check-endpoint`` /health, ``--disable-health-check``): every server's endpoint is
  polled; that many consecutive failures take it out of rotation, that many successes bring it
  back.
- Circuit breaker (``--cb-failure-threshold`` 10, ``--cb-success-threshold`` 3,
  ``--cb-timeout-duration-secs`` 60, ``--disable-circuit-breaker``): consecutive failed requests
  (connection refused, timeout, 5xx) open a server's breaker; after the timeout it is half-open
  and takes requests again as trials; that many successes close it, one failure opens it again.

A server is routed to when it is healthy and its breaker is not open. The state machines are
pure (``now`` is passed in); :class:`HealthChecker` is the asyncio loop that feeds them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import aiohttp

logger = logging.getLogger("sglang.mini_lb")
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
CB_STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}  # sglang-router's cb_state gauge encoding


@dataclass
class HealthConfig:
    interval: float = 60.0
    timeout: float = 5.0
    failure_threshold: int = 3
    success_threshold: int = 2
    endpoint: str = "/health"
    enabled: bool = True


@dataclass
class BreakerConfig:
    failure_threshold: int = 10
    success_threshold: int = 3
    timeout: float = 60.0
    enabled: bool = True


@dataclass
class HealthState:
    """Consecutive health-check results -> in or out of rotation (starts in)."""

    cfg: HealthConfig
    healthy: bool = True
    failures: int = 0
    successes: int = 0
    last_error: Optional[str] = None

    def record(self, ok: bool, error: Optional[str] = None) -> Optional[bool]:
        """One check's result; returns the new ``healthy`` when it changed, else None."""
        if ok:
            self.failures, self.successes = 0, self.successes + 1
            if not self.healthy and self.successes >= self.cfg.success_threshold:
                self.healthy = True
                return True
        else:
            self.successes, self.failures = 0, self.failures + 1
            self.last_error = error
            if self.healthy and self.failures >= self.cfg.failure_threshold:
                self.healthy = False
                return False
        return None


@dataclass
class CircuitBreaker:
    cfg: BreakerConfig
    state: str = CLOSED
    failures: int = 0  # consecutive
    successes: int = 0  # consecutive, counted while half-open
    opened_at: float = 0.0
    transitions: int = 0

    def _to(self, state: str, now: float) -> None:
        if state != self.state:
            self.state, self.transitions = state, self.transitions + 1
        if state == OPEN:
            self.opened_at = now
        self.failures = self.successes = 0

    def current(self, now: float) -> str:
        """The state now (an open breaker whose timeout passed is half-open)."""
        if self.state == OPEN and now - self.opened_at >= self.cfg.timeout:
            self._to(HALF_OPEN, now)
        return self.state

    def can_execute(self, now: float) -> bool:
        return not self.cfg.enabled or self.current(now) != OPEN

    def record(self, ok: bool, now: float) -> None:
        if not self.cfg.enabled:
            return
        state = self.current(now)
        if ok:
            self.failures, self.successes = 0, self.successes + 1
            if state == HALF_OPEN and self.successes >= self.cfg.success_threshold:
                self._to(CLOSED, now)
        else:
            self.successes, self.failures = 0, self.failures + 1
            if state == HALF_OPEN or self.failures >= self.cfg.failure_threshold:
                self._to(OPEN, now)


@dataclass
class Worker:
    url: str
    role: str  # "prefill" or "decode"
    health: HealthState
    breaker: CircuitBreaker
    checks: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})

    def available(self, now: float) -> bool:
        return self.health.healthy and self.breaker.can_execute(now)

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url, "role": self.role, "available": self.available(now),
            "healthy": self.health.healthy,
            "consecutive_health_failures": self.health.failures,
            "consecutive_health_successes": self.health.successes,
            "last_health_error": self.health.last_error,
            "health_checks": dict(self.checks),
            "circuit_breaker": {"state": self.breaker.current(now),
                                "consecutive_failures": self.breaker.failures,
                                "consecutive_successes": self.breaker.successes},
        }  # fmt: skip


class Workers:
    """Health and breaker state per server URL."""

    def __init__(self, health: HealthConfig, breaker: BreakerConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.health_cfg, self.breaker_cfg, self.clock = health, breaker, clock
        self.by_url: dict[str, Worker] = {}

    def add(self, url: str, role: str) -> Worker:
        if url not in self.by_url:
            self.by_url[url] = Worker(url, role, HealthState(self.health_cfg),
                                      CircuitBreaker(self.breaker_cfg))  # fmt: skip
        return self.by_url[url]

    def available(self, url: str) -> bool:
        w = self.by_url.get(url)
        return w is None or w.available(self.clock())

    def record_request(self, url: str, ok: bool) -> None:
        w = self.by_url.get(url)
        if w is None:
            return
        before = w.breaker.state
        w.breaker.record(ok, self.clock())
        if w.breaker.state != before:
            logger.warning("%s %s: circuit breaker %s -> %s", w.role, url, before,
                           w.breaker.state)  # fmt: skip

    def record_check(self, url: str, ok: bool, error: Optional[str] = None) -> None:
        w = self.by_url.get(url)
        if w is None:
            return
        w.checks["success" if ok else "failure"] += 1
        changed = w.health.record(ok, error)
        if changed is True:
            logger.info("%s %s is healthy again: back in rotation", w.role, url)
        elif changed is False:
            logger.warning("%s %s failed %d health checks (%s): out of rotation", w.role, url,
                           w.health.failures, error)  # fmt: skip

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        now = self.clock()
        out: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": []}
        for w in self.by_url.values():
            out[w.role].append(w.describe(now))
        return out


class HealthChecker:
    """Polls every server's health endpoint every ``interval`` seconds, all at once."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.task: Optional[asyncio.Task[None]] = None

    def start(self, session: aiohttp.ClientSession) -> None:
        if self.workers.health_cfg.enabled:
            self.task = asyncio.create_task(self._loop(session))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass

    async def check(self, session: aiohttp.ClientSession, url: str) -> None:
        cfg = self.workers.health_cfg
        try:
            async with session.get(url + cfg.endpoint,
                                   timeout=aiohttp.ClientTimeout(total=cfg.timeout)) as r:
                await r.read()
                ok, err = r.status == 200, f"HTTP {r.status}"
        except asyncio.TimeoutError:
            ok, err = False, f"no answer within {cfg.timeout:g}s"
        except aiohttp.ClientError as e:
            ok, err = False, str(e) or type(e).__name__
        self.workers.record_check(url, ok, None if ok else err)

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.workers.health_cfg.interval)
            urls = list(self.workers.by_url)
            await asyncio.gather(*(self.check(session, u) for u in urls), return_exceptions=True)
