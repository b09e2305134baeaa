"""Figures of bench_pd_vs_unified.py from its raw measurements (pure logic, no servers): per-run
summaries (TTFT and ITL percentiles, output throughput), PD/unified ratios, the targets' verdict,
the "transfer never stalls the decode" ratio, the headline JSON and the PNG.

Load runs come from sglang.bench_serving's per-request details; the lone stream of the stall
check is a list of ``(t_chunk, new_tokens)``. ITL follows sglang.bench_serving: a chunk of k
tokens after a gap g counts k gaps of g / k.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Iterable, Sequence

Chunks = Sequence[tuple[float, int]]
QUANTILES = (50, 90, 99)


def percentile(xs: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no samples."""
    s = sorted(xs)
    if not s:
        return 0.0
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def itls(chunks: Chunks) -> list[float]:
    out: list[float] = []
    for (t0, _), (t1, k) in zip(chunks, chunks[1:]):
        k = max(k, 1)
        out += [(t1 - t0) / k] * k
    return out


def dist(xs: Sequence[float]) -> dict[str, float]:
    d = {f"p{q}": percentile(xs, q) for q in QUANTILES}
    d["max"] = max(xs) if xs else 0.0
    d["mean"] = statistics.fmean(xs) if xs else 0.0
    return d


def summarize(ttfts: Sequence[float], itl_samples: Sequence[float], output_tokens: int,
              duration: float, failed: int = 0) -> dict[str, Any]:
    """TTFT and ITL distributions (seconds) and output tokens/s over the run's wall time, as
    bench_serving reports them."""
    return {"completed": len(ttfts), "failed": failed, "output_tokens": output_tokens,
            "duration_s": duration,
            "output_throughput": output_tokens / duration if duration > 0 else 0.0,
            "ttft": dist(ttfts), "itl": dist(itl_samples), "itl_samples": list(itl_samples)}


def merge_bench_results(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Runs of sglang.bench_serving made side by side (``--output-details``: per-request
    ``ttfts``, ``itls``, ``output_lens``) summed into one: the wall time is the longest run's."""
    ttfts, itl, tokens, failed = [], [], 0, 0
    for r in results:
        ok = [i for i, t in enumerate(r["ttfts"]) if t and t > 0]
        ttfts += [r["ttfts"][i] for i in ok]
        itl += [g for i in ok for g in r["itls"][i]]
        tokens += sum(r["output_lens"][i] for i in ok)
        failed += len(r["ttfts"]) - len(ok)
    return summarize(ttfts, itl, tokens, max(r["duration"] for r in results), failed)


def ratios(pd: dict[str, Any], unified: dict[str, Any]) -> dict[str, float]:
    """PD / unified for every percentile of TTFT and ITL, and for output throughput (nan where
    the unified figure is 0)."""
    def div(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    r = {f"{m}_{k}": div(pd[m][k], unified[m][k])
         for m in ("ttft", "itl") for k in (*(f"p{q}" for q in QUANTILES), "max")}
    r["output_throughput"] = div(pd["output_throughput"], unified["output_throughput"])
    return r


def verdict(r: dict[str, float], itl_target: float = 0.5, tput_target: float = 0.8) -> dict:
    """The brief's target: p99 ITL on PD <= 0.5x unified at output throughput >= 0.8x."""
    itl_ok = r["itl_p99"] <= itl_target
    tput_ok = r["output_throughput"] >= tput_target
    return {"itl_p99_ok": itl_ok, "throughput_ok": tput_ok, "met": itl_ok and tput_ok}


def split_by_windows(chunks: Chunks, windows: Sequence[tuple[float, float]],
                     skip: int = 2) -> tuple[list[float], list[float]]:
    """A lone stream's ITL samples split into (quiet, in a window): a gap counts as in a window
    when the chunk that closes it arrives inside one. The first ``skip`` gaps (start-up) are
    dropped."""
    quiet: list[float] = []
    busy: list[float] = []
    for i, ((t0, _), (t1, k)) in enumerate(zip(chunks, chunks[1:])):
        if i < skip:
            continue
        k = max(k, 1)
        inside = any(a <= t1 <= b for a, b in windows)
        (busy if inside else quiet).extend([(t1 - t0) / k] * k)
    return quiet, busy


def stall_ratio(quiet: Sequence[float], busy: Sequence[float]) -> dict[str, float]:
    """Median and mean ITL with transfers in flight over the same without; nan without samples."""
    def ratio(f):
        return f(busy) / f(quiet) if quiet and busy and f(quiet) > 0 else float("nan")

    return {"quiet_median": statistics.median(quiet) if quiet else float("nan"),
            "busy_median": statistics.median(busy) if busy else float("nan"),
            "quiet_n": len(quiet), "busy_n": len(busy),
            "median_ratio": ratio(statistics.median), "mean_ratio": ratio(statistics.fmean)}


def headline(rates: Sequence[float], runs: dict[tuple[str, float], dict[str, Any]],
             stall: dict[str, float], cpu: dict[str, Any]) -> dict[str, Any]:
    """One JSON-able dict: per rate the p99 ITL/TTFT (ms), throughputs and PD/unified ratios."""
    per_rate = []
    for rate in rates:
        u, p = runs[("unified", rate)], runs[("pd", rate)]
        r = ratios(p, u)
        per_rate.append({
            "rate": rate,
            "unified_itl_p99_ms": round(u["itl"]["p99"] * 1e3, 2),
            "pd_itl_p99_ms": round(p["itl"]["p99"] * 1e3, 2),
            "unified_ttft_p99_ms": round(u["ttft"]["p99"] * 1e3, 2),
            "pd_ttft_p99_ms": round(p["ttft"]["p99"] * 1e3, 2),
            "unified_tok_s": round(u["output_throughput"], 2),
            "pd_tok_s": round(p["output_throughput"], 2),
            "itl_p99_ratio": round(r["itl_p99"], 3),
            "throughput_ratio": round(r["output_throughput"], 3),
            "target_met": verdict(r)["met"],
        })
    return {"bench": "pd_vs_unified", "per_rate": per_rate,
            "stall_median_ratio": round(stall["median_ratio"], 3),
            "stall_within_10pct": bool(stall["median_ratio"] <= 1.10),
            "stall_decode_cpu_ratio": round(stall.get("cpu_ratio", float("nan")), 3), "cpu": cpu}


def plot(rates: Sequence[float], runs: dict[tuple[str, float], dict[str, Any]],
         path: str, title: str) -> str:
    """Left: ITL distributions (CDF per side and rate, log x). Right: p99 ITL against request
    rate for both sides. Written with matplotlib's Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"unified": "tab:red", "pd": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    for side, label in (("unified", "unified"), ("pd", "1P1D")):
        for i, rate in enumerate(rates):
            xs = sorted(x * 1e3 for x in runs[(side, rate)]["itl_samples"])
            if not xs:
                continue
            ys = [(j + 1) / len(xs) for j in range(len(xs))]
            a.plot(xs, ys, styles[i % len(styles)], color=colors[side],
                   label=f"{label} @ {rate:g} req/s")
        b.plot(list(rates), [runs[(side, r)]["itl"]["p99"] * 1e3 for r in rates], "o-",
               color=colors[side], label=label)
    a.set_xscale("log")
    a.set_xlabel("inter-token latency (ms, log)")
    a.set_ylabel("fraction of tokens")
    a.set_title("ITL distribution (CDF)")
    a.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    b.set_xlabel("request rate (req/s)")
    b.set_ylabel("p99 ITL (ms, log)")
    b.set_yscale("log")
    b.set_title("p99 ITL against request rate")
    b.grid(True, alpha=0.3)
    b.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
