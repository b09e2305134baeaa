"""``python -m sglang.bench_serving``: SGLang 0.5's online serving benchmark (same flags, printed
block and JSONL keys) for this project's servers, mini_lb and sglang-router.

As a library::

    from sglang.bench_serving import make_args, run_benchmark
    result = run_benchmark(make_args(base_url="http://127.0.0.1:8000", dataset_name="random-ids",
                                     num_prompts=16, random_input_len=64, random_output_len=16,
                                     output_file="/tmp/bench.jsonl", disable_tqdm=True))
    result["output_throughput"], result["p99_itl_ms"]

Files: ``args`` (command line), ``datasets`` (prompts), ``request_funcs`` (one timed request per
backend), ``metrics`` (the arithmetic), ``report`` (printed block, JSONL), ``runner`` (the run)."""

from sglang.bench_serving.args import build_parser, make_args, parse_args
from sglang.bench_serving.metrics import BenchmarkMetrics, calculate_metrics, parse_goodput
from sglang.bench_serving.runner import run_benchmark

__all__ = ["build_parser", "make_args", "parse_args", "run_benchmark", "BenchmarkMetrics",
           "calculate_metrics", "parse_goodput"]
