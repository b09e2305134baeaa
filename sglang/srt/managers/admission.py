"""Which waiting requests the scheduler accepts, and in what order it tries them.

- --max-queued-requests N: a request arriving while N requests already wait is refused with
  status 429 (as SGLang), instead of queueing without bound.
- --schedule-policy lpm: the waiting queue is tried longest cached prefix first (the radix
  cache's match), so requests that share a cached prefix run while it is still cached. Ties
  keep arrival order; a request already under way (a chunked prefill that continues, holding
  pages) keeps its place in front. As SGLang, beyond LPM_MAX_QUEUE waiting requests the order
  stays FCFS (matching every request on every step costs more than it saves).
  fcfs (default): arrival order.
- --stream-interval N: a streamed request is sent its first token at once, then every N new
  tokens, and always the last.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

LPM_MAX_QUEUE = 128


def queue_full_message(num_waiting: int, limit: Optional[int]) -> Optional[str]:
    """The refusal message when ``num_waiting`` requests already fill the queue, else None."""
    if limit is None or num_waiting < limit:
        return None
    return (f"The request queue is full: {num_waiting} requests are waiting "
            f"(--max-queued-requests {limit}); retry later")


def under_way(req: Any) -> bool:
    return req.req_pool_idx is not None or bool(req.pages)


def order_longest_prefix_first(waiting: list[Any], prefix_len: Callable[[Any], int]) -> None:
    """Sort ``waiting`` in place for lpm (see the module docstring)."""
    if len(waiting) < 2 or len(waiting) > LPM_MAX_QUEUE:
        return
    head = [r for r in waiting if under_way(r)]
    rest = [r for r in waiting if not under_way(r)]
    lens = {id(r): prefix_len(r) for r in rest}
    rest.sort(key=lambda r: -lens[id(r)])  # stable: ties stay in arrival order
    waiting[:] = head + rest


def cached_prefix_len(cache: Any) -> Callable[[Any], int]:
    """prefix_len for :func:`order_longest_prefix_first` from a KVCacheManager's radix tree."""
    tree = getattr(cache, "tree", None)

    def length(req: Any) -> int:
        if tree is None:
            return 0
        ids = req.fill_ids[: max(len(req.fill_ids) - 1, 0)]
        return len(tree.match_prefix(ids).pages) * cache.page_size

    return length


def stream_due(req: Any, interval: int) -> bool:
    """Should a streamed request's new tokens go out now?"""
    unsent = len(req.output_ids) - req.sent_len
    return req.sent_len == 0 or unsent >= interval or req.finished
