"""``python -m sglang.bench_serving`` end to end on the session's servers (conftest): the unified
reference server with every backend, streamed and not, and the Mooncake 1P1D cluster through
mini_lb with ``--pd-separated --flush-cache``. Every request must succeed, the generated token
count must be exactly num_prompts * output length (ignore_eos), the JSONL line must carry
SGLang's keys and ``--output-details`` its per-request arrays; the KV pools end whole."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pool_checks import assert_pool_whole
from sglang.bench_serving import make_args, run_benchmark

N, IN_LEN, OUT_LEN = 6, 40, 8
KEYS = ("backend", "dataset_name", "request_rate", "max_concurrency", "random_input_len",
        "random_output_len", "random_range_ratio", "duration", "completed",
        "total_input_tokens", "total_output_tokens", "total_output_tokens_retokenized",
        "request_throughput", "input_throughput", "output_throughput", "mean_e2e_latency_ms",
        "median_e2e_latency_ms", "p99_e2e_latency_ms", "mean_ttft_ms", "median_ttft_ms",
        "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "mean_itl_ms", "median_itl_ms",
        "p95_itl_ms", "p99_itl_ms", "concurrency", "accept_length")
DETAILS = ("input_lens", "output_lens", "ttfts", "itls", "generated_texts", "errors")


def bench(url: str, out, **kw) -> tuple[dict, dict]:
    args = make_args(base_url=url, dataset_name="random-ids", num_prompts=N,
                     random_input_len=IN_LEN, random_output_len=OUT_LEN, random_range_ratio=1.0,
                     output_file=str(out), disable_tqdm=True, warmup_requests=0, **kw)
    result = run_benchmark(args)
    line = json.loads(out.read_text().splitlines()[-1])
    return result, line


def check(result: dict, line: dict, stream: bool) -> None:
    assert result["completed"] == N, result["errors"]
    assert result["total_input_tokens"] == N * IN_LEN
    assert result["total_output_tokens"] == N * OUT_LEN
    assert result["output_lens"] == [OUT_LEN] * N
    for key in KEYS:
        assert key in line, key
    assert line["total_output_tokens"] == N * OUT_LEN and line["completed"] == N
    assert all(t > 0 for t in result["ttfts"]) and result["mean_e2e_latency_ms"] > 0
    if stream:  # one ITL per token after the first (native: chunks of k count k)
        assert result["mean_ttft_ms"] < result["mean_e2e_latency_ms"]
    else:  # one chunk: TTFT is the whole latency, no ITL
        assert all(itl == [] for itl in result["itls"])
        assert result["mean_ttft_ms"] == pytest.approx(result["mean_e2e_latency_ms"])


@pytest.mark.parametrize("backend", ["sglang", "sglang-oai", "sglang-oai-chat"])
@pytest.mark.parametrize("stream", [True, False])
def test_unified_every_backend(unified, tmp_path, backend, stream):
    out = tmp_path / "bench.jsonl"
    result, line = bench(unified, out, backend=backend, disable_stream=not stream,
                         output_details=True, max_concurrency=4)
    check(result, line, stream)
    for key in DETAILS:
        assert len(line[key]) == N, key
    if stream and backend == "sglang":
        # one ITL per token after the first chunk (a loaded machine may put 2 tokens in it)
        assert all(len(itl) <= OUT_LEN - 1 for itl in result["itls"])
        assert sum(map(len, result["itls"])) > 0
    assert_pool_whole(unified)


def test_pd_through_mini_lb(pd_clusters, tmp_path):
    cluster = pd_clusters("mooncake")
    out = tmp_path / "pd.jsonl"
    for backend, stream in (("sglang", True), ("sglang-oai-chat", False)):
        result, line = bench(cluster.url, out, backend=backend, disable_stream=not stream,
                             pd_separated=True, flush_cache=True, request_rate=50.0,
                             goodput=["e2e:600000"])
        check(result, line, stream)
        assert not any(k in line for k in DETAILS)  # no --output-details
        assert line["request_goodput"] == pytest.approx(N / line["duration"])
        assert "decode" in line["server_info"] and "prefill" in line["server_info"]
    assert len(out.read_text().splitlines()) == 2  # appended
    for server in (*cluster.prefills, *cluster.decodes):
        assert_pool_whole(server.url)


def test_cli_prints_the_result_block(unified, tmp_path):
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "sglang.bench_serving", "--base-url", unified, "--backend",
         "sglang-oai", "--dataset-name", "random", "--num-prompts", str(N), "--random-input-len",
         str(IN_LEN), "--random-output-len", str(OUT_LEN), "--random-range-ratio", "1",
         "--output-file", str(out), "--seed", "3"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "Serving Benchmark Result" in text and "Backend:" in text
    assert "{:<40} {:<10}".format("Successful requests:", N) in text
    assert "{:<40} {:<10}".format("Total generated tokens:", N * OUT_LEN) in text
    assert "{:<40} {:<10}".format("Total input tokens:", N * IN_LEN) in text
    assert json.loads(out.read_text())["completed"] == N
    # A bad flag value is refused with what is wrong, exit code 2 (argparse).
    bad = subprocess.run([sys.executable, "-m", "sglang.bench_serving", "--base-url", unified,
                          "--dataset-name", "random", "--random-range-ratio", "2"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--random-range-ratio must be within [0, 1]" in bad.stderr
