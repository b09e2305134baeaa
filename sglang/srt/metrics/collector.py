"""The Prometheus metrics of one server, under SGLang's names, in a registry of their own.

Names, types, labels and buckets follow SGLang's ``sglang/srt/metrics/collector.py``:
scheduler gauges and the PD ones, KV transfer histograms (observed once per finished transfer on
the prefill), PD failure counters, and the tokenizer's per-request histograms and counters. Each
server builds its own ``CollectorRegistry`` (never prometheus_client's global one), so several
apps in one process do not clash.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sglang.srt.metrics.scheduler_stats import SchedulerStats

TTFT_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400]
E2E_BUCKETS = [0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600,
               1200, 1800, 2400]
ITL_BUCKETS = [0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040,
               0.060, 0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0]
SPEED_BUCKETS = (0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400)
LATENCY_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
BOOTSTRAP_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
TOTAL_MB_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)

SCHEDULER_GAUGES = {
    "num_running_reqs": "The number of running requests.",
    "num_queue_reqs": "The number of requests in the waiting queue.",
    "num_used_tokens": "The number of used tokens.",
    "max_total_num_tokens": "Maximum total number of tokens in the KV cache pool.",
    "token_usage": "The token usage.",
    "cache_hit_rate": "The prefix cache hit rate.",
    "gen_throughput": "The generation throughput (token/s).",
    "num_prefill_bootstrap_queue_reqs": "The number of requests in the prefill bootstrap queue.",
    "num_prefill_inflight_queue_reqs": "The number of requests in the prefill inflight queue.",
    "num_decode_prealloc_queue_reqs": "The number of requests in the decode prealloc queue.",
    "num_decode_transfer_queue_reqs": "The number of requests in the decode transfer queue.",
}


class SchedulerMetricsCollector:
    """Fed by the scheduler's pushed :class:`SchedulerStats` snapshots. With ``dp_size`` > 1
    every metric also carries a ``dp_rank`` label, one series per replica (each snapshot says
    its replica)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str], dp_size: int = 1):
        label_sets = ([{**labels, "dp_rank": str(d)} for d in range(dp_size)] if dp_size > 1
                      else [labels])
        names = list(label_sets[0])
        gauges = {k: Gauge(f"sglang:{k}", doc, names, registry=registry)
                  for k, doc in SCHEDULER_GAUGES.items()}

        def hist(name: str, doc: str, buckets) -> Histogram:
            return Histogram(name, doc, names, buckets=buckets, registry=registry)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, names, registry=registry)

        parents = {
            "kv_speed": hist("sglang:kv_transfer_speed_gb_s",
                             "Histogram of KV cache transfer speed in GB/s.", SPEED_BUCKETS),
            "kv_latency": hist("sglang:kv_transfer_latency_ms",
                               "Histogram of KV cache transfer latency in ms.", LATENCY_MS_BUCKETS),
            "kv_bootstrap": hist("sglang:kv_transfer_bootstrap_ms",
                                 "Histogram of KV transfer bootstrap time in ms.",
                                 BOOTSTRAP_MS_BUCKETS),
            "kv_total_mb": hist("sglang:kv_transfer_total_mb",
                                "Histogram of KV cache transfer size in MB.", TOTAL_MB_BUCKETS),
            "bootstrap_failed": counter("sglang:num_bootstrap_failed_reqs",
                                        "The number of bootstrap failed requests."),
            "transfer_failed": counter("sglang:num_transfer_failed_reqs",
                                       "The number of transfer failed requests."),
        }
        # per replica: gauge name -> child, and metric -> child
        self._gauges = [{k: g.labels(**ls) for k, g in gauges.items()} for ls in label_sets]
        self._children = [{k: m.labels(**ls) for k, m in parents.items()} for ls in label_sets]

    def log_stats(self, s: SchedulerStats) -> None:
        d = s.dp_rank if 0 <= s.dp_rank < len(self._gauges) else 0
        for k, g in self._gauges[d].items():
            g.set(getattr(s, k))
        m = self._children[d]
        for speed, latency_ms, total_mb in s.kv_transfers:
            m["kv_speed"].observe(speed)
            m["kv_latency"].observe(latency_ms)
            m["kv_total_mb"].observe(total_mb)
        for ms in s.kv_bootstrap_ms:
            m["kv_bootstrap"].observe(ms)
        if s.bootstrap_failed:
            m["bootstrap_failed"].inc(s.bootstrap_failed)
        if s.transfer_failed:
            m["transfer_failed"].inc(s.transfer_failed)


class TokenizerMetricsCollector:
    """Per-request metrics, observed in the HTTP process as outputs arrive."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        names = list(labels)

        def counter(name: str, doc: str):
            return Counter(name, doc, names, registry=registry).labels(**labels)

        def hist(name: str, doc: str, buckets):
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**labels)

        # prometheus_client adds the _total suffix of a counter itself
        self.prompt_tokens = counter("sglang:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("sglang:generation_tokens",
                                         "Number of generation tokens processed.")
        self.cached_tokens = counter("sglang:cached_tokens", "Number of cached prompt tokens.")
        self.num_requests = counter("sglang:num_requests", "Number of requests processed.")
        self.num_aborted = counter("sglang:num_aborted_requests", "Number of requests aborted.")
        self.ttft = hist("sglang:time_to_first_token_seconds",
                         "Histogram of time to first token in seconds.", TTFT_BUCKETS)
        self.itl = hist("sglang:inter_token_latency_seconds",
                        "Histogram of inter-token latency in seconds.", ITL_BUCKETS)
        self.e2e = hist("sglang:e2e_request_latency_seconds",
                        "Histogram of End-to-end request latency in seconds", E2E_BUCKETS)

    def observe_inter_token_latency(self, interval: float, num_new_tokens: int) -> None:
        """SGLang's rule: ``num_new_tokens`` observations of ``interval / num_new_tokens``."""
        each = interval / num_new_tokens
        for _ in range(num_new_tokens):
            self.itl.observe(each)

    def observe_one_finished_request(self, prompt_tokens: int, generation_tokens: int,
                                     cached_tokens: int, e2e_latency: float) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generation_tokens.inc(generation_tokens)
        if cached_tokens > 0:
            self.cached_tokens.inc(cached_tokens)
        self.num_requests.inc()
        self.e2e.observe(e2e_latency)
