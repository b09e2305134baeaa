"""The servers behind the balancer, their requests in flight, and the choice of a (prefill,
decode) pair per request by the ``--policy`` (``policy.py``)."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse

from sglang.srt.disaggregation.lb.policy import (
    CACHE_THRESHOLD,
    LoadFn,
    PrefixAffinity,
    imbalanced,
    least_busy,
    power_of_two,
)
from sglang.srt.utils.network import bracket_host


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


class ServerPool:
    def __init__(self, prefills: list[Prefill], decodes: list[str],
                 policy: str = "round_robin", seed: Optional[int] = None) -> None:  # fmt: skip
        self.prefills = list(prefills)
        self.decodes = list(decodes)
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

    def select_pair(self) -> tuple[Prefill, str]:
        """The next pair of the round-robin over every (prefill, decode) pair."""
        self._check()
        p, d = pair_index(self._next, len(self.prefills), len(self.decodes))
        self._next += 1
        return self.prefills[p], self.decodes[d]

    async def choose(self, text: str, fetch_load: LoadFn) -> tuple[Prefill, str]:
        """A (prefill, decode) pair for a request whose prompt reads ``text``, by the policy."""
        self._check()
        if self.policy == "round_robin":
            return self.select_pair()
        if self.policy == "random":
            return self.rng.choice(self.prefills), self.rng.choice(self.decodes)
        if self.policy == "power_of_two":
            p = await power_of_two(self.prefills, lambda x: x.url, self.inflight.__getitem__,
                                   fetch_load, self.rng)  # fmt: skip
            d = await power_of_two(self.decodes, str, self.inflight.__getitem__, fetch_load,
                                   self.rng)  # fmt: skip
            return p, d
        if self.policy == "cache_aware":
            return self._cache_aware(text)
        raise ValueError(f"unknown policy {self.policy!r}")

    def _cache_aware(self, text: str) -> tuple[Prefill, str]:
        load = self.inflight.__getitem__
        loads = [load(p.url) for p in self.prefills]
        owner, share = self.affinity.match(text, [p.url for p in self.prefills])
        if owner is not None and share >= CACHE_THRESHOLD and not imbalanced(loads):
            prefill = next(p for p in self.prefills if p.url == owner)
        else:
            prefill = least_busy(self.prefills, lambda p: load(p.url), self.rng)
        self.affinity.record(text, prefill.url)
        return prefill, least_busy(self.decodes, load, self.rng)

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
        return True

    def all_urls(self) -> list[str]:
        return [p.url for p in self.prefills] + list(self.decodes)
