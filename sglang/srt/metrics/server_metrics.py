"""The HTTP process's side of ``--enable-metrics``: one registry per server, fed by the request
outputs as they arrive and by the scheduler's pushed snapshots, served on ``GET /metrics``.

Per request, as SGLang's TokenizerManager: the time to first token once the first output token
arrives (not on a prefill server, whose token is the decode's), then for every later output
with ``n`` new tokens ``n`` inter-token latencies of ``interval / n``; when it finishes, its
prompt, generation and cached tokens, its end-to-end latency and one request (aborts are also
counted in ``sglang:num_aborted_requests_total``). A scrape renders what is already here; it never
asks the scheduler anything. Without the flag the route does not exist (404).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

from sglang.srt.base_types import is_abort
from sglang.srt.metrics.scheduler_stats import SchedulerStats


@dataclass
class RequestTrack:
    """What one request's metrics need between its outputs."""

    first_token_time: float = 0.0
    last_time: float = 0.0
    last_completion_tokens: int = 0


class ServerMetrics:
    def __init__(self, args: Any):
        from prometheus_client import CollectorRegistry

        from sglang.srt.metrics.collector import (
            SchedulerMetricsCollector,
            TokenizerMetricsCollector,
        )

        self.registry = CollectorRegistry()
        mode = args.disaggregation_mode
        self.is_prefill = mode == "prefill"
        model = args.served_model_name or args.model_path
        sched_labels = {"model_name": model, "engine_type": "unified" if mode == "null" else mode,
                        "tp_rank": "0", "pp_rank": "0"}  # fmt: skip
        self.scheduler = SchedulerMetricsCollector(self.registry, sched_labels,
                                                   getattr(args, "dp_size", 1))
        self.tokenizer = TokenizerMetricsCollector(self.registry, {"model_name": model})

    def on_output(self, state: Any, out: Any) -> None:
        """One ReqOutput of a request (``state``: its tokenizer-manager state, with ``created``
        in ``time.time()`` seconds and a ``mtrack`` slot)."""
        track: Optional[RequestTrack] = state.mtrack
        if track is None:
            track = state.mtrack = RequestTrack()
        now = time.time()
        tm = self.tokenizer
        tokens = out.completion_tokens
        if track.first_token_time == 0.0:
            if tokens > 0 and not self.is_prefill:
                track.first_token_time = track.last_time = now
                track.last_completion_tokens = tokens
                tm.ttft.observe(now - state.created)
        elif tokens > track.last_completion_tokens:
            tm.observe_inter_token_latency(now - track.last_time,
                                           tokens - track.last_completion_tokens)
            track.last_time, track.last_completion_tokens = now, tokens
        reason = out.finished_reason
        if reason is not None:
            tm.observe_one_finished_request(out.prompt_tokens, tokens, out.cached_tokens,
                                            now - state.created)
            if is_abort(reason):
                tm.num_aborted.inc()

    def on_message(self, msg: Any) -> None:
        """A message from the scheduler other than outputs and RPC answers."""
        if isinstance(msg, SchedulerStats):
            self.scheduler.log_stats(msg)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def create_server_metrics(args: Any) -> Optional[ServerMetrics]:
    return ServerMetrics(args) if getattr(args, "enable_metrics", False) else None


def register_metrics_route(app: Any, state: Any) -> None:
    """``GET /metrics`` on a FastAPI app, only with ``--enable-metrics``."""
    if not state.args.enable_metrics:
        return
    from fastapi.responses import Response

    # Prometheus text, not an API: out of /openapi.json (whose schema build would also choke on
    # this function's string annotation under ``from __future__ import annotations``)
    @app.get("/metrics", include_in_schema=False, response_class=Response)
    async def metrics():
        tm = state.tm
        m = getattr(tm, "metrics", None)
        if m is None:
            return Response("metrics are not available yet\n", status_code=503,
                            media_type="text/plain")  # fmt: skip
        body, ctype = m.render()
        return Response(body, media_type=ctype)
