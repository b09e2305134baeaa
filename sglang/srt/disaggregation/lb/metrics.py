"""mini_lb's ``--enable-metrics``: ``GET /metrics`` on the balancer's own port, with
sglang-router's metric names (``sgl_router_*``), so dashboards made for the router work.

- ``sgl_router_requests_total{route}``: generation requests received (``/generate``,
  ``/v1/completions``, ``/v1/chat/completions``), refused ones included;
- ``sgl_router_request_errors_total{route,error_type}``: those that failed; ``error_type`` is
  the HTTP status answered, or ``stream_failed`` for a stream that broke after it started;
- ``sgl_router_pd_requests_total{route}``: requests sent to a (prefill, decode) pair;
- ``sgl_router_pd_prefill_requests_total{worker}``,
  ``sgl_router_pd_decode_requests_total{worker}``: per server URL;
- ``sgl_router_pd_errors_total{error_type}``: routed requests that failed;
- ``sgl_router_running_requests{worker}``: routed requests in flight per server;
- ``sgl_router_pd_request_duration_seconds{route}``: a routed request from arrival to the end of
  its response (the whole stream for a streamed one);
- ``sgl_router_worker_health{worker,role}``: 1 while a server is in rotation by its health
  checks, else 0; ``sgl_router_worker_cb_state{worker,role}``: its circuit breaker, 0 closed,
  1 open, 2 half-open (sglang-router's ``worker_health`` and ``worker_cb_state``);
- ``sgl_router_worker_health_checks_total{worker,result}``: health checks by result;
- ``sgl_router_retries_total{worker}``: attempts retried on another pair, by the server that
  failed.
"""

from __future__ import annotations

import contextvars
import time
from typing import Any, Optional

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from sglang.srt.disaggregation.lb.health import CB_STATE_VALUE
from sglang.srt.disaggregation.lb.legs import LegError
from sglang.srt.disaggregation.lb.pool import ServerPool
from sglang.srt.disaggregation.lb.proxy import Job, Proxy

GENERATION_ROUTES = ("/generate", "/v1/completions", "/v1/chat/completions")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30, 45,
                    60, 90, 120, 180, 240)
# what the proxy learns about the request being handled (set per request by the middleware)
_CURRENT: contextvars.ContextVar[Optional[dict[str, Any]]] = contextvars.ContextVar(
    "sgl_lb_request", default=None)


class WorkerStates(Collector):
    """Health and circuit-breaker gauges read from the pool at scrape time."""

    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool

    def collect(self) -> Any:
        health = GaugeMetricFamily("sgl_router_worker_health", "Worker in rotation by its "
                                   "health checks (1) or not (0)", labels=["worker", "role"])
        cb = GaugeMetricFamily("sgl_router_worker_cb_state", "Worker circuit breaker state "
                               "(0 closed, 1 open, 2 half_open)", labels=["worker", "role"])
        checks = CounterMetricFamily("sgl_router_worker_health_checks",
                                     "Health checks by result", labels=["worker", "result"])
        for role, states in self.pool.workers.describe().items():
            for w in states:
                health.add_metric([w["url"], role], 1.0 if w["healthy"] else 0.0)
                cb.add_metric([w["url"], role], CB_STATE_VALUE[w["circuit_breaker"]["state"]])
                for result, n in w["health_checks"].items():
                    checks.add_metric([w["url"], result], n)
        return [health, cb, checks]


class LBMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.retries = Counter("sgl_router_retries_total", "Attempts retried on another "
                               "(prefill, decode) pair, by the failed server", ["worker"],
                               registry=r)  # fmt: skip
        self.requests = Counter("sgl_router_requests_total", "Total requests by route",
                                ["route"], registry=r)  # fmt: skip
        self.request_errors = Counter("sgl_router_request_errors_total",
                                      "Total request errors by route and error type",
                                      ["route", "error_type"], registry=r)  # fmt: skip
        self.pd_requests = Counter("sgl_router_pd_requests_total", "Total PD requests by route",
                                   ["route"], registry=r)  # fmt: skip
        self.pd_prefill = Counter("sgl_router_pd_prefill_requests_total",
                                  "Total prefill requests per worker", ["worker"], registry=r)
        self.pd_decode = Counter("sgl_router_pd_decode_requests_total",
                                 "Total decode requests per worker", ["worker"], registry=r)
        self.pd_errors = Counter("sgl_router_pd_errors_total", "Total PD errors by error type",
                                 ["error_type"], registry=r)  # fmt: skip
        self.running = Gauge("sgl_router_running_requests", "Number of running requests per "
                             "worker", ["worker"], registry=r)  # fmt: skip
        self.duration = Histogram("sgl_router_pd_request_duration_seconds",
                                  "PD request duration by route", ["route"],
                                  buckets=DURATION_BUCKETS, registry=r)  # fmt: skip

    # ---- wiring ---------------------------------------------------------------------------
    def proxy(self, timeout: float, pool: ServerPool) -> Proxy:
        self.registry.register(WorkerStates(pool))
        return MeteredProxy(timeout, self)

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._middleware)
        app.router.add_get("/metrics", self._serve)

    async def _serve(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.path
        if request.method != "POST" or route not in GENERATION_ROUTES:
            return await handler(request)
        self.requests.labels(route).inc()
        rec: dict[str, Any] = {}
        token = _CURRENT.set(rec)
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        finally:
            _CURRENT.reset(token)
            job: Optional[Job] = rec.get("job")
            error = (str(status) if status >= 400
                     else "stream_failed" if rec.get("ok") is False else None)  # fmt: skip
            if error is not None:
                self.request_errors.labels(route, error).inc()
            if job is not None:
                self.running.labels(job.prefill).dec()
                self.running.labels(job.decode).dec()
                self.duration.labels(route).observe(time.perf_counter() - t0)
                if error is not None:
                    self.pd_errors.labels(error).inc()

    def routed(self, job: Job) -> None:
        rec = _CURRENT.get()
        if rec is None:
            return
        old: Optional[Job] = rec.get("job")
        rec["job"] = job
        if old is not None:  # a retry: the request now runs on the new pair
            self.running.labels(old.prefill).dec()
            self.running.labels(old.decode).dec()
            self.running.labels(job.prefill).inc()
            self.running.labels(job.decode).inc()
            self.pd_prefill.labels(job.prefill).inc()
            self.pd_decode.labels(job.decode).inc()
            return
        self.pd_requests.labels("/" + job.endpoint).inc()
        self.pd_prefill.labels(job.prefill).inc()
        self.pd_decode.labels(job.decode).inc()
        self.running.labels(job.prefill).inc()
        self.running.labels(job.decode).inc()


class MeteredProxy(Proxy):
    """The balancer's Proxy, telling :class:`LBMetrics` where each request went and whether
    it ended well (``_cleanup`` learns that last, for streams too)."""

    def __init__(self, timeout: float, metrics: LBMetrics) -> None:
        super().__init__(timeout)
        self.metrics = metrics

    async def forward(self, job: Job) -> web.Response:
        self.metrics.routed(job)
        return await super().forward(job)

    async def forward_stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        self.metrics.routed(job)
        return await super().forward_stream(request, job)

    def on_retry(self, job: Job, error: LegError) -> None:
        self.metrics.retries.labels(error.server or "").inc()

    def _cleanup(self, job: Job, tasks: dict, ok: bool, streaming: bool = False,
                 error: Optional[LegError] = None) -> None:  # fmt: skip
        rec = _CURRENT.get()
        if rec is not None:
            rec["ok"] = ok
        super()._cleanup(job, tasks, ok, streaming, error)


def create_lb_metrics(args: Any) -> Optional[LBMetrics]:
    return LBMetrics() if getattr(args, "enable_metrics", False) else None
