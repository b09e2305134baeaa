"""mini_lb's routing policies, with sglang-router's names (``--policy``).

- ``round_robin``: walks every (prefill, decode) pair in turn (``pool.pair_index``).
- ``random``: a uniformly random prefill and decode, as SGLang's MiniLB.
- ``power_of_two``: per role, two random candidates; the one with fewer requests wins, as each
  reports on ``GET /get_load`` (``num_reqs``), else as counted here (requests in flight).
- ``cache_aware``: prefix affinity, an approximation of the router's radix tree: the prompt's
  text is cut in blocks of ``BLOCK`` characters and each cumulative prefix is hashed; a request
  goes to the prefill that last served its longest known prefix when that covers at least
  ``CACHE_THRESHOLD`` of it and the prefills are not out of balance, else to the least busy
  prefill. The decode is the least busy one (the decode keeps no prefix cache in PD).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Optional, TypeVar

POLICIES = ("random", "round_robin", "power_of_two", "cache_aware")
BLOCK = 64  # characters per prefix block
MAX_ENTRIES = 200_000  # prefix hashes remembered (least recently used dropped first)
CACHE_THRESHOLD = 0.3  # sglang-router's --cache-threshold default
BALANCE_ABS, BALANCE_REL = 64, 1.5  # sglang-router's --balance-abs/rel-threshold defaults

LoadFn = Callable[[str], Awaitable[Optional[float]]]
T = TypeVar("T")


def prefix_hashes(text: str) -> list[bytes]:
    """Hashes of text[:BLOCK], text[:2*BLOCK], ..., and of the whole text."""
    ends = list(range(BLOCK, len(text), BLOCK)) + [len(text)] if text else []
    h = hashlib.blake2b(digest_size=16)
    out, start = [], 0
    for end in ends:
        h.update(text[start:end].encode("utf-8", "surrogatepass"))
        out.append(h.copy().digest())
        start = end
    return out


class PrefixAffinity:
    """Which server last served each prompt prefix (bounded, least recently used first out)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.owner: OrderedDict[bytes, str] = OrderedDict()
        self.max_entries = max_entries

    def match(self, text: str, alive: Sequence[str]) -> tuple[Optional[str], float]:
        """The server holding the longest known prefix of ``text`` and the share it covers."""
        hashes = prefix_hashes(text)
        best, covered = None, 0
        for i, h in enumerate(hashes):
            url = self.owner.get(h)
            if url is None or url not in alive:
                break
            best, covered = url, min((i + 1) * BLOCK, len(text))
        return best, (covered / len(text) if text else 0.0)

    def record(self, text: str, url: str) -> None:
        for h in prefix_hashes(text):
            self.owner[h] = url
            self.owner.move_to_end(h)
        while len(self.owner) > self.max_entries:
            self.owner.popitem(last=False)


def least_busy(items: Sequence[T], load: Callable[[T], float], rng: random.Random) -> T:
    low = min(load(x) for x in items)
    return rng.choice([x for x in items if load(x) == low])


def imbalanced(loads: list[float]) -> bool:
    hi, lo = max(loads), min(loads)
    return hi - lo > BALANCE_ABS and hi > BALANCE_REL * lo


async def power_of_two(
    items: Sequence[T], url_of: Callable[[T], str], inflight: Callable[[str], int],
    fetch_load: LoadFn, rng: random.Random,
) -> T:  # fmt: skip
    if len(items) == 1:
        return items[0]
    a, b = rng.sample(list(items), 2)
    reported = await asyncio.gather(fetch_load(url_of(a)), fetch_load(url_of(b)))
    loads = [float(inflight(url_of(x))) if r is None else r for x, r in zip((a, b), reported)]
    return b if loads[1] < loads[0] else a
