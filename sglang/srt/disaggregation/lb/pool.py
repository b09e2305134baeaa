"""The servers behind the balancer, their requests in flight, and the choice of a (prefill,
decode) pair per request by the ``--policy`` (``policy.py``)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar
from urllib.parse import urlparse

from sglang.srt.disaggregation.lb.health import BreakerConfig, HealthConfig, Workers
from sglang.srt.disaggregation.lb.policy import (
    CACHE_THRESHOLD,
    LoadFn,
    PrefixAffinity,
    imbalanced,
    least_busy,
    power_of_two,
)
from sglang.srt.utils.network import bracket_host


T = TypeVar("T")


@dataclass(frozen=True)
class Prefill:
    url: str
    bootstrap_port: Optional[int]

    @property
    def bootstrap_host(self) -> str:
        return bootstrap_host(self.url)


def bootstrap_host(url: str) -> str:
    """Host part of a server URL; an IPv6 address gets brackets."""
    return bracket_host(urlparse(url).hostname or "")


def pair_index(k: int, n_prefill: int, n_decode: int) -> tuple[int, int]:
    """The k-th pair of a round-robin that alternates both lists and covers all P x D pairs
    within n_prefill * n_decode picks (a plain double round-robin would pair P0 only with D0
    when both lists have two servers)."""
    lcm = n_prefill * n_decode // math.gcd(n_prefill, n_decode)
    return k % n_prefill, (k + k // lcm) % n_decode


class NoHealthyServer(LookupError):
    """Every server of one side is out of rotation (health checks or circuit breaker)."""


class ServerPool:
    def __init__(self, prefills: list[Prefill], decodes: list[str],
                 policy: str = "round_robin", seed: Optional[int] = None,
                 workers: Optional[Workers] = None) -> None:  # fmt: skip
        self.prefills = list(prefills)
        self.decodes = list(decodes)
        self.workers = workers or Workers(HealthConfig(enabled=False), BreakerConfig())
        for p in self.prefills:
            self.workers.add(p.url, "prefill")
        for d in self.decodes:
            self.workers.add(d, "decode")
        self.policy = policy
        self._next = 0
        self.rng = random.Random(seed)
        self.inflight: Counter[str] = Counter()  # requests sent and not answered, per server
        self.affinity = PrefixAffinity()

    def _check(self) -> None:
        if not self.prefills or not self.decodes:
            raise LookupError(
                f"no server to route to: {len(self.prefills)} prefill, {len(self.decodes)} "
                "decode; start them with --prefill/--decode or POST /register"
            )

    def _eligible(self, role: str, items: list[T], url_of: Callable[[T], str],
                  exclude: frozenset[str]) -> list[T]:  # fmt: skip
        """Servers in rotation, less ``exclude`` (unless that would leave none)."""
        live = [x for x in items if self.workers.available(url_of(x))]
        if not live:
            raise NoHealthyServer(
                f"no healthy {role} server: all {len(items)} are out of rotation (failed health "
                f"checks or open circuit breaker): " + ", ".join(url_of(x) for x in items))
        return [x for x in live if url_of(x) not in exclude] or live

    def select_pair(self, prefills: Optional[list[Prefill]] = None,
                    decodes: Optional[list[str]] = None) -> tuple[Prefill, str]:  # fmt: skip
        """The next pair of the round-robin over every (prefill, decode) pair."""
        self._check()
        prefills, decodes = prefills or self.prefills, decodes or self.decodes
        p, d = pair_index(self._next, len(prefills), len(decodes))
        self._next += 1
        return prefills[p], decodes[d]

    async def choose(self, text: str, fetch_load: LoadFn,
                     exclude: frozenset[str] = frozenset()) -> tuple[Prefill, str]:  # fmt: skip
        """A (prefill, decode) pair for a request whose prompt reads ``text``, by the policy,
        among the servers in rotation; ``exclude``: servers to avoid when others are left."""
        self._check()
        ps = self._eligible("prefill", self.prefills, lambda x: x.url, exclude)
        ds = self._eligible("decode", self.decodes, str, exclude)
        if self.policy == "round_robin":
            return self.select_pair(ps, ds)
        if self.policy == "random":
            return self.rng.choice(ps), self.rng.choice(ds)
        if self.policy == "power_of_two":
            p = await power_of_two(ps, lambda x: x.url, self.inflight.__getitem__,
                                   fetch_load, self.rng)  # fmt: skip
            d = await power_of_two(ds, str, self.inflight.__getitem__, fetch_load, self.rng)
            return p, d
        if self.policy == "cache_aware":
            return self._cache_aware(text, ps, ds)
        raise ValueError(f"unknown policy {self.policy!r}")

    def _cache_aware(self, text: str, ps: list[Prefill], ds: list[str]) -> tuple[Prefill, str]:
        load = self.inflight.__getitem__
        loads = [load(p.url) for p in ps]
        owner, share = self.affinity.match(text, [p.url for p in ps])
        if owner is not None and share >= CACHE_THRESHOLD and not imbalanced(loads):
            prefill = next(p for p in ps if p.url == owner)
        else:
            prefill = least_busy(ps, lambda p: load(p.url), self.rng)
        self.affinity.record(text, prefill.url)
        return prefill, least_busy(ds, load, self.rng)

    def begin(self, *urls: str) -> None:
        self.inflight.update(urls)

    def end(self, *urls: str) -> None:
        self.inflight.subtract(urls)

    def register(self, mode: str, url: str, bootstrap_port: Optional[int]) -> bool:
        """Add a server; False if it was already there."""
        if mode == "prefill":
            if any(p.url == url for p in self.prefills):
                return False
            self.prefills.append(Prefill(url, bootstrap_port))
        elif mode == "decode":
            if url in self.decodes:
                return False
            self.decodes.append(url)
        else:
            raise ValueError(f"mode must be 'prefill' or 'decode', got {mode!r}")
        self.workers.add(url, mode)
        return True

    def all_urls(self) -> list[str]:
        return [p.url for p in self.prefills] + list(self.decodes)
