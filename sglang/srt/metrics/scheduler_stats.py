"""What the scheduler process measures for ``--enable-metrics``, and the snapshot it pushes.

The scheduler never serves /metrics itself: at most every ``PUSH_INTERVAL`` seconds, and only
when something changed, it sends one :class:`SchedulerStats` message to the HTTP process over
the socket that carries its outputs; the HTTP process owns the Prometheus registry, so a scrape
never waits on the scheduler. Per-event observations (one per finished KV transfer, one per
finished bootstrap) and failure counts ride along with the next snapshot. With metrics off every
hook returns at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sglang.srt.base_types import ForwardMode

# The recorder reads the scheduler's batches and requests (sglang.srt.managers) by duck typing:
# metrics sit below managers in the layer order, so those types are not imported here.
_Batch = _Req = Any

PUSH_INTERVAL = 0.5  # seconds between two snapshots at most this often


@dataclass
class SchedulerStats:
    """One snapshot of the scheduler (gauges) plus what happened since the previous one."""

    num_running_reqs: int = 0
    num_queue_reqs: int = 0
    num_used_tokens: int = 0
    max_total_num_tokens: int = 0
    token_usage: float = 0.0
    cache_hit_rate: float = 0.0
    gen_throughput: float = 0.0
    # PD queues (0 on servers of the other mode)
    num_prefill_bootstrap_queue_reqs: int = 0
    num_prefill_inflight_queue_reqs: int = 0
    num_decode_prealloc_queue_reqs: int = 0
    num_decode_transfer_queue_reqs: int = 0
    # since the previous snapshot: (speed GB/s, latency ms, total MB) per finished transfer
    kv_transfers: list[tuple[float, float, float]] = field(default_factory=list)
    kv_bootstrap_ms: list[float] = field(default_factory=list)
    bootstrap_failed: int = 0
    transfer_failed: int = 0
    dp_rank: int = 0  # the replica that sent it (--dp-size)

    def gauges(self) -> tuple:
        return (self.num_running_reqs, self.num_queue_reqs, self.num_used_tokens,
                self.max_total_num_tokens, self.token_usage, self.cache_hit_rate,
                self.gen_throughput, self.num_prefill_bootstrap_queue_reqs,
                self.num_prefill_inflight_queue_reqs, self.num_decode_prealloc_queue_reqs,
                self.num_decode_transfer_queue_reqs)  # fmt: skip

    def has_events(self) -> bool:
        return bool(self.kv_transfers or self.kv_bootstrap_ms or self.bootstrap_failed
                    or self.transfer_failed)  # fmt: skip


def transfer_observation(metric: dict[str, Any]) -> tuple[float, float, float] | None:
    """SGLang's units for one transfer: GB/s and MB in binary units (2**30, 2**20), ms."""
    nbytes, secs = metric.get("bytes"), metric.get("seconds")
    if not nbytes or not secs:
        return None
    return nbytes / (1 << 30) / secs, secs * 1000.0, nbytes / (1 << 20)


class SchedulerStatsRecorder:
    def __init__(self, enabled: bool, dp_rank: int = 0):
        self.enabled = enabled
        self.dp_rank = dp_rank
        self.pending = SchedulerStats(dp_rank=dp_rank)
        self._last_gauges: tuple | None = None
        self._last_push = time.monotonic()
        self._gen_tokens = 0
        self._hit_tokens = 0
        self._computed_tokens = 0
        self._hit_rate = 0.0

    # ---- hooks (scheduler thread) -----------------------------------------------------------
    def on_batch(self, batch: _Batch, page_size: int) -> None:
        """After a forward pass, before the requests' kv_len moves on."""
        if not self.enabled:
            return
        if batch.mode == ForwardMode.EXTEND:
            for req, n in zip(batch.reqs, batch.extend_lens):
                if req.kv_len == req.prefix_pages * page_size:  # first pass since admission
                    self._hit_tokens += req.kv_len
                self._computed_tokens += n
        else:
            self._gen_tokens += len(batch.reqs)

    def on_bootstrapped(self, req: _Req) -> None:
        """A prefill request leaves the bootstrap queue (its decode's pages arrived)."""
        if self.enabled:
            self.pending.kv_bootstrap_ms.append((time.monotonic() - req.created) * 1000.0)

    def on_transfer(self, metric: dict[str, Any]) -> None:
        """A prefill request's KV transfer finished."""
        if self.enabled:
            obs = transfer_observation(metric)
            if obs is not None:
                self.pending.kv_transfers.append(obs)

    def on_failure(self, what: str) -> None:
        """A PD request failed (``what``: the queues' description of the failure)."""
        if not self.enabled:
            return
        w = what.lower()
        if "bootstrap" in w or "handshake" in w:
            self.pending.bootstrap_failed += 1
        else:
            self.pending.transfer_failed += 1

    # ---- snapshots ------------------------------------------------------------------------
    def maybe_push(self, gauges: Callable[[], dict[str, int]], send: Callable[[Any], None]
                   ) -> None:
        """From the scheduler loop: send a snapshot if one is due and anything changed.
        ``gauges()`` gives the scheduler's sizes (``Scheduler.gauges``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last_push < PUSH_INTERVAL:
            return
        snap = self._snapshot(gauges(), now - self._last_push)
        self._last_push = now
        gauge_values = snap.gauges()
        if gauge_values == self._last_gauges and not snap.has_events():
            return
        self._last_gauges = gauge_values
        self.pending = SchedulerStats(dp_rank=self.dp_rank)
        send(snap)

    def _snapshot(self, g: dict[str, int], elapsed: float) -> SchedulerStats:
        snap = self.pending
        total_pages, page_size = g["total_pages"], g["page_size"]
        snap.max_total_num_tokens = total_pages * page_size
        # free plus evictable prefix-cache pages count as free
        snap.num_used_tokens = (total_pages - g["available_pages"]) * page_size
        snap.token_usage = snap.num_used_tokens / max(snap.max_total_num_tokens, 1)
        snap.num_running_reqs = g["running"]
        snap.num_queue_reqs = g["waiting"]
        snap.gen_throughput = self._gen_tokens / elapsed if elapsed > 0 else 0.0
        self._gen_tokens = 0
        if self._hit_tokens + self._computed_tokens:  # SGLang: hit / (hit + computed)
            self._hit_rate = self._hit_tokens / (self._hit_tokens + self._computed_tokens)
            self._hit_tokens = self._computed_tokens = 0
        snap.cache_hit_rate = self._hit_rate
        for name in ("num_prefill_bootstrap_queue_reqs", "num_prefill_inflight_queue_reqs",
                     "num_decode_prealloc_queue_reqs", "num_decode_transfer_queue_reqs"):
            setattr(snap, name, g.get(name, 0))  # the PD layer's queues (0 in other modes)
        return snap
