"""What a run shows and keeps: SGLang 0.5's "Serving Benchmark Result" block (same labels and
layout, so scripts that grep it keep working; goodput and failures only when present), the
result dict under SGLang's JSONL keys, and the JSONL line appended to ``--output-file``."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any, Optional

from sglang.bench_serving.metrics import BenchmarkMetrics

ROW = "{:<40} {:<10}"
ROWF = "{:<40} {:<10.2f}"


def _section(title: str) -> str:
    return "{s:{c}^{n}}".format(s=title, n=50, c="-")


def format_result(args: Any, m: BenchmarkMetrics, duration: float,
                  accept_length: Optional[float] = None) -> str:
    lines = ["\n{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="="),
             ROW.format("Backend:", args.backend),
             ROW.format("Traffic request rate:", args.request_rate),
             ROW.format("Max request concurrency:", args.max_concurrency or "not set"),
             ROW.format("Successful requests:", m.completed)]
    if m.failed:
        lines.append(ROW.format("Failed requests:", m.failed))
    lines += [ROWF.format("Benchmark duration (s):", duration),
              ROW.format("Total input tokens:", m.total_input),
              ROW.format("Total generated tokens:", m.total_output),
              ROW.format("Total generated tokens (retokenized):", m.total_output_retokenized),
              ROWF.format("Request throughput (req/s):", m.request_throughput)]
    if m.request_goodput is not None:
        lines.append(ROWF.format("Request goodput (req/s):", m.request_goodput))
    lines += [ROWF.format("Input token throughput (tok/s):", m.input_throughput),
              ROWF.format("Output token throughput (tok/s):", m.output_throughput),
              ROWF.format("Total token throughput (tok/s):", m.total_throughput),
              ROWF.format("Concurrency:", m.concurrency)]
    if accept_length:
        lines.append(ROWF.format("Accept length:", accept_length))
    lines += [_section("End-to-End Latency"),
              ROWF.format("Mean E2E Latency (ms):", m.mean_e2e_latency_ms),
              ROWF.format("Median E2E Latency (ms):", m.median_e2e_latency_ms),
              ROWF.format("P90 E2E Latency (ms):", m.p90_e2e_latency_ms),
              ROWF.format("P99 E2E Latency (ms):", m.p99_e2e_latency_ms),
              _section("Time to First Token"),
              ROWF.format("Mean TTFT (ms):", m.mean_ttft_ms),
              ROWF.format("Median TTFT (ms):", m.median_ttft_ms),
              ROWF.format("P99 TTFT (ms):", m.p99_ttft_ms),
              _section("Time per Output Token (excl. 1st token)"),
              ROWF.format("Mean TPOT (ms):", m.mean_tpot_ms),
              ROWF.format("Median TPOT (ms):", m.median_tpot_ms),
              ROWF.format("P99 TPOT (ms):", m.p99_tpot_ms),
              _section("Inter-Token Latency"),
              ROWF.format("Mean ITL (ms):", m.mean_itl_ms),
              ROWF.format("Median ITL (ms):", m.median_itl_ms),
              ROWF.format("P95 ITL (ms):", m.p95_itl_ms),
              ROWF.format("P99 ITL (ms):", m.p99_itl_ms),
              ROWF.format("Max ITL (ms):", m.max_itl_ms),
              "=" * 50]
    return "\n".join(lines)


def format_errors(outputs) -> str:
    """Failed requests grouped by error, most frequent first."""
    errors = Counter(o.error.strip() or "unknown error" for o in outputs if not o.success)
    return "\n".join(f"{n} request(s) failed: {err}" for err, n in errors.most_common())


def build_result(args: Any, m: BenchmarkMetrics, duration: float,
                 accept_length: Optional[float], server_info: Optional[dict]) -> dict:
    result = {
        "backend": args.backend,
        "dataset_name": args.dataset_name,
        "request_rate": args.request_rate,
        "max_concurrency": args.max_concurrency,
        "sharegpt_output_len": args.sharegpt_output_len,
        "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len,
        "random_range_ratio": args.random_range_ratio,
        "server_info": server_info,
        "duration": duration,
        "completed": m.completed,
        "failed": m.failed,
        "total_input_tokens": m.total_input,
        "total_output_tokens": m.total_output,
        "total_output_tokens_retokenized": m.total_output_retokenized,
        "request_throughput": m.request_throughput,
        "input_throughput": m.input_throughput,
        "output_throughput": m.output_throughput,
        "total_throughput": m.total_throughput,
    }
    for name in ("e2e_latency", "ttft", "tpot", "itl"):
        for stat in ("mean", "median", "std"):
            result[f"{stat}_{name}_ms"] = getattr(m, f"{stat}_{name}_ms")
        if name == "e2e_latency":
            result["p90_e2e_latency_ms"] = m.p90_e2e_latency_ms
        if name == "itl":
            result["p95_itl_ms"] = m.p95_itl_ms
        result[f"p99_{name}_ms"] = getattr(m, f"p99_{name}_ms")
    result["max_itl_ms"] = m.max_itl_ms
    result["concurrency"] = m.concurrency
    result["accept_length"] = accept_length
    if m.request_goodput is not None:
        result["request_goodput"] = m.request_goodput
        result["goodput"] = getattr(args, "goodput", None)
    return result


def build_details(outputs, output_lens) -> dict:
    return {
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": list(output_lens),
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
    }


def output_file_name(args: Any) -> str:
    if args.output_file:
        return args.output_file
    now = datetime.now().strftime("%m%d")
    if args.dataset_name.startswith("random"):
        return (f"{args.backend}_{now}_{args.num_prompts}_{args.random_input_len}_"
                f"{args.random_output_len}.jsonl")
    return f"{args.backend}_{now}_{args.num_prompts}_{args.dataset_name}.jsonl"


def append_jsonl(args: Any, result: dict, details: dict) -> str:
    path = output_file_name(args)
    line = result | details if args.output_details else result
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")
    return path
