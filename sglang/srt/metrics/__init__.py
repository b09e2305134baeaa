"""Prometheus metrics (``--enable-metrics``) under SGLang's names.

- ``scheduler_stats.py``: what the scheduler process measures and pushes (no prometheus here);
- ``collector.py``: the Prometheus metrics of a server, in one CollectorRegistry per server;
- ``server_metrics.py``: the HTTP process's side: per-request observations, the scheduler's
  pushed snapshots, and the ``/metrics`` route.

mini_lb's own metrics (sglang-router's ``sgl_router_*`` names) wrap its proxy, so they live with
it in ``sglang/srt/disaggregation/lb/metrics.py``.
"""
