"""The servers behind the balancer and the choice of a (prefill, decode) pair per request."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlparse


@dataclass(frozen=True)
class Prefill:
    url: str
    bootstrap_port: Optional[int]

    @property
    def bootstrap_host(self) -> str:
        return bootstrap_host(self.url)


def bootstrap_host(url: str) -> str:
    """Host part of a server URL; an IPv6 address gets brackets."""
    host = urlparse(url).hostname or ""
    return f"[{host}]" if ":" in host else host


def pair_index(k: int, n_prefill: int, n_decode: int) -> tuple[int, int]:
    """The k-th pair of a round-robin that alternates both lists and covers all P x D pairs
    within n_prefill * n_decode picks (a plain double round-robin would pair P0 only with D0
    when both lists have two servers)."""
    lcm = n_prefill * n_decode // math.gcd(n_prefill, n_decode)
    return k % n_prefill, (k + k // lcm) % n_decode


class ServerPool:
    def __init__(self, prefills: list[Prefill], decodes: list[str]) -> None:
        self.prefills = list(prefills)
        self.decodes = list(decodes)
        self._next = 0

    def select_pair(self) -> tuple[Prefill, str]:
        if not self.prefills or not self.decodes:
            raise LookupError(
                f"no server to route to: {len(self.prefills)} prefill, {len(self.decodes)} "
                "decode; start them with --prefill/--decode or POST /register"
            )
        p, d = pair_index(self._next, len(self.prefills), len(self.decodes))
        self._next += 1
        return self.prefills[p], self.decodes[d]

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
