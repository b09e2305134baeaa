"""The figures of SGLang 0.5's "Serving Benchmark Result" from per-request timings: throughputs
over the benchmark's duration, E2E/TTFT/TPOT/ITL statistics as numpy computes them (mean,
median, std, ``np.percentile`` with its default linear interpolation), concurrency (sum of
E2E latencies / duration), and goodput: requests per second meeting every ``--goodput`` SLO.

TPOT of a request = (latency - TTFT) / (output tokens - 1), for requests of more than one output
token. An empty list (e.g. no ITL without streaming) gives 0, as in SGLang."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

# --goodput keys -> metric; "e2el" is vLLM's spelling of the same SLO.
GOODPUT_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2e": "e2e", "e2el": "e2e"}


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    total_output_retokenized: int
    request_throughput: float
    input_throughput: float
    output_throughput: float
    output_throughput_retokenized: float
    total_throughput: float
    total_throughput_retokenized: float
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p95_itl_ms: float
    p99_itl_ms: float
    max_itl_ms: float
    mean_e2e_latency_ms: float
    median_e2e_latency_ms: float
    std_e2e_latency_ms: float
    p90_e2e_latency_ms: float
    p99_e2e_latency_ms: float
    concurrency: float
    request_goodput: Optional[float] = None

    def as_dict(self) -> dict:
        return asdict(self)


def parse_goodput(items: Sequence[str]) -> Dict[str, float]:
    """``["ttft:500", "e2e:3000"]`` -> ``{"ttft": 500.0, "e2e": 3000.0}`` (milliseconds)."""
    slos: Dict[str, float] = {}
    for item in items:
        for part in str(item).split():
            key, sep, value = part.partition(":")
            if not sep or key.lower() not in GOODPUT_KEYS:
                raise ValueError(f"--goodput takes KEY:MS with KEY one of ttft, tpot, e2e; "
                                 f"got {part!r}")
            try:
                ms = float(value)
            except ValueError:
                raise ValueError(f"--goodput {part!r}: {value!r} is not a number of ms") from None
            if ms < 0:
                raise ValueError(f"--goodput {part!r}: the SLO must be >= 0 ms")
            slos[GOODPUT_KEYS[key.lower()]] = ms
    return slos


def _stat(values: List[float], fn, *a) -> float:
    return float(fn(values or 0, *a)) * 1000


def calculate_metrics(prompt_lens: Sequence[int], outputs: Sequence, dur_s: float,
                      tokenizer=None, goodput: Optional[Dict[str, float]] = None):
    """``outputs``: objects with success, output_len, ttft, itl, latency, generated_text
    (``RequestFuncOutput``); ``prompt_lens[i]`` is request i's prompt length. ``tokenizer`` is
    used to retokenize the generated text (None: retokenized counts stay 0). Returns the
    metrics and the per-request output lengths (0 for a failed request)."""
    output_lens: List[int] = []
    retok: List[int] = []
    ttfts: List[float] = []
    tpots: List[float] = []
    itls: List[float] = []
    e2es: List[float] = []
    total_input = completed = good = 0
    for prompt_len, out in zip(prompt_lens, outputs):
        if not out.success:
            output_lens.append(0)
            retok.append(0)
            continue
        n = out.output_len
        output_lens.append(n)
        retok.append(len(tokenizer.encode(out.generated_text, add_special_tokens=False))
                     if tokenizer is not None else 0)
        total_input += prompt_len
        tpot = (out.latency - out.ttft) / (n - 1) if n > 1 else None
        if tpot is not None:
            tpots.append(tpot)
        itls += out.itl
        ttfts.append(out.ttft)
        e2es.append(out.latency)
        completed += 1
        if goodput:
            got = {"ttft": out.ttft, "tpot": tpot or 0.0, "e2e": out.latency}
            good += all(got[k] * 1000 <= slo for k, slo in goodput.items())
    if completed == 0:
        warnings.warn("All requests failed. This is likely due to a misconfiguration "
                      "on the benchmark arguments.", stacklevel=2)
    total_output, total_retok = sum(output_lens), sum(retok)
    m = BenchmarkMetrics(
        completed=completed,
        failed=len(outputs) - completed,
        total_input=total_input,
        total_output=total_output,
        total_output_retokenized=total_retok,
        request_throughput=completed / dur_s,
        input_throughput=total_input / dur_s,
        output_throughput=total_output / dur_s,
        output_throughput_retokenized=total_retok / dur_s,
        total_throughput=(total_input + total_output) / dur_s,
        total_throughput_retokenized=(total_input + total_retok) / dur_s,
        mean_ttft_ms=_stat(ttfts, np.mean),
        median_ttft_ms=_stat(ttfts, np.median),
        std_ttft_ms=_stat(ttfts, np.std),
        p99_ttft_ms=_stat(ttfts, np.percentile, 99),
        mean_tpot_ms=_stat(tpots, np.mean),
        median_tpot_ms=_stat(tpots, np.median),
        std_tpot_ms=_stat(tpots, np.std),
        p99_tpot_ms=_stat(tpots, np.percentile, 99),
        mean_itl_ms=_stat(itls, np.mean),
        median_itl_ms=_stat(itls, np.median),
        std_itl_ms=_stat(itls, np.std),
        p95_itl_ms=_stat(itls, np.percentile, 95),
        p99_itl_ms=_stat(itls, np.percentile, 99),
        max_itl_ms=_stat(itls, np.max),
        mean_e2e_latency_ms=_stat(e2es, np.mean),
        median_e2e_latency_ms=_stat(e2es, np.median),
        std_e2e_latency_ms=_stat(e2es, np.std),
        p90_e2e_latency_ms=_stat(e2es, np.percentile, 90),
        p99_e2e_latency_ms=_stat(e2es, np.percentile, 99),
        concurrency=float(np.sum(e2es)) / dur_s,
        request_goodput=good / dur_s if goodput else None,
    )
    return m, output_lens
