"""--enable-metrics: /metrics in Prometheus' text format, under SGLang's names, moved by exactly
the traffic sent.

A unified server of its own (launched here), the session's Mooncake 1P1D cluster (whose servers
run with --enable-metrics, conftest.py) and a mini_lb with --enable-metrics in front of that
cluster's servers; scraped before and after N streamed requests of known prompt lengths and
max_new_tokens, parsed with prometheus_client's parser. Without the flag (the session's reference
server, the cluster's own mini_lb) /metrics is 404.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from pool_checks import assert_pool_whole
from sglang.test.server_utils import free_port, launch_server, start

# tests/conftest.py's REFERENCE_ARGS (the shared cluster's, less --enable-metrics)
SERVER_ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
               "--context-length", "1024"]
M = 6  # max_new_tokens of every request (ignore_eos)
PROMPT_LENS = [7, 13, 22]  # each under the chunk size (32): one extend pass per prompt
ZERO_AT_REST = ["num_running_reqs", "num_queue_reqs", "num_prefill_bootstrap_queue_reqs",
                "num_prefill_inflight_queue_reqs", "num_decode_prealloc_queue_reqs",
                "num_decode_transfer_queue_reqs"]


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def val(samples: dict, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def names(samples: dict) -> set[str]:
    return {n for n, _ in samples}


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


def wait_for(url: str, ok, what: str, timeout: float = 30) -> dict:
    """Scrape until ``ok(samples)`` (the scheduler pushes its stats at most every 0.5 s)."""
    deadline = time.time() + timeout
    samples = scrape(url)
    while not ok(samples) and time.time() < deadline:
        time.sleep(0.2)
        samples = scrape(url)
    assert ok(samples), f"{url}: {what}: " + str(
        {n: v for (n, _), v in samples.items() if n.startswith("sglang:num")})
    return samples


def at_rest(samples: dict) -> bool:
    return all(val(samples, f"sglang:{g}") == 0 for g in ZERO_AT_REST)


def prompt(n: int, salt: int) -> list[int]:
    return [(7 * i + 31 * salt) % 1000 + 10 for i in range(n)]


def stream(url: str, input_ids: list[int]) -> dict:
    """One streamed /generate; its last chunk."""
    body = {"input_ids": input_ids, "stream": True,
            "sampling_params": {"max_new_tokens": M, "temperature": 0, "ignore_eos": True}}
    last = None
    with requests.post(url + "/generate", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        for line in r.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                last = json.loads(line[6:])
    assert last is not None and last["meta_info"]["completion_tokens"] == M, last
    return last


def check_request_metrics(before: dict, after: dict, n: int, prompt_tokens: int) -> None:
    """The HTTP process's per-request metrics after ``n`` streamed requests of M tokens."""
    assert delta(before, after, "sglang:num_requests_total") == n
    assert delta(before, after, "sglang:prompt_tokens_total") == prompt_tokens
    assert delta(before, after, "sglang:generation_tokens_total") == n * M
    assert delta(before, after, "sglang:time_to_first_token_seconds_count") == n
    assert delta(before, after, "sglang:e2e_request_latency_seconds_count") == n
    # SGLang's rule: one inter-token latency per output token after the first
    assert delta(before, after, "sglang:inter_token_latency_seconds_count") == n * (M - 1)
    assert delta(before, after, "sglang:time_to_first_token_seconds_sum") > 0
    assert delta(before, after, "sglang:e2e_request_latency_seconds_sum") >= delta(
        before, after, "sglang:time_to_first_token_seconds_sum")


# ---- unified ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metrics_server(tiny_model, log_dir):
    proc = launch_server(tiny_model, log_dir, "metrics-unified",
                         [*SERVER_ARGS, "--enable-metrics"])
    yield proc.url
    proc.stop()


def test_unified_server_metrics(metrics_server):
    url = metrics_server
    before = wait_for(url, at_rest, "not at rest before")
    for g in ZERO_AT_REST + ["token_usage", "cache_hit_rate", "gen_throughput"]:
        assert f"sglang:{g}" in names(before)
    labels = dict(next(ls for n, ls in before if n == "sglang:num_running_reqs"))
    assert labels["engine_type"] == "unified" and labels["model_name"]
    for i, n in enumerate(PROMPT_LENS):
        stream(url, prompt(n, i))
    after = wait_for(url, lambda s: at_rest(s) and val(s, "sglang:token_usage") == 0
                     and val(s, "sglang:gen_throughput") == 0, "not at rest after")
    check_request_metrics(before, after, len(PROMPT_LENS), sum(PROMPT_LENS))
    assert val(after, "sglang:max_total_num_tokens") == 4096
    assert val(after, "sglang:num_used_tokens") == 0
    assert val(after, "sglang:gen_throughput") == 0  # nothing generated in the last window
    for name in ["sglang:kv_transfer_total_mb_count", "sglang:num_transfer_failed_reqs_total",
                 "sglang:num_bootstrap_failed_reqs_total"]:
        assert delta(before, after, name) == 0

    # The same prompt again, alone in a stats window: the hit rate is its cached share.
    time.sleep(1.2)
    out = stream(url, prompt(PROMPT_LENS[-1], len(PROMPT_LENS) - 1))
    cached = out["meta_info"]["cached_tokens"]
    assert cached >= 4 * (PROMPT_LENS[-1] // 4) - 4 and cached > 0
    again = wait_for(url, lambda s: val(s, "sglang:cache_hit_rate") == pytest.approx(
        cached / PROMPT_LENS[-1]), "cache_hit_rate")
    assert delta(after, again, "sglang:cached_tokens_total") == cached
    assert delta(after, again, "sglang:num_requests_total") == 1
    # ``again`` holds a snapshot of the scheduler's (its hit rate); ``after`` may still have shown
    # the value the HTTP side starts with, from the scheduler's ready message
    assert val(again, "sglang:max_total_num_tokens") == 4096
    assert_pool_whole(url)


def test_metrics_404_without_the_flag(unified):
    r = requests.get(unified + "/metrics", timeout=10)
    assert r.status_code == 404


# ---- PD -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster(pd_clusters):
    return pd_clusters("mooncake")


@pytest.fixture(scope="module")
def metrics_lb(cluster, log_dir):
    """A mini_lb with --enable-metrics in front of the shared cluster's servers."""
    port = free_port()
    argv = ["-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1", "--port", str(port),
            "--prefill", cluster.prefills[0].url, "--decode", cluster.decodes[0].url,
            "--prefill-bootstrap-ports", str(cluster.bootstrap_ports[0]), "--enable-metrics"]
    proc = start("mini_lb-metrics", argv, f"http://127.0.0.1:{port}", log_dir)
    yield proc.url
    proc.stop()


def kv_bytes_per_token(model_path: str, storage_dtype: str) -> int:
    """From the model's shape: layers x (K and V) x kv_heads x head_dim x element bytes."""
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    elem = 1 if storage_dtype.startswith("fp8") else torch.empty(
        0, dtype=getattr(torch, storage_dtype)).element_size()
    return cfg["num_hidden_layers"] * 2 * cfg["num_key_value_heads"] * head_dim * elem


def test_pd_cluster_metrics(cluster, metrics_lb, tiny_model):
    prefill, decode = cluster.prefills[0].url, cluster.decodes[0].url
    lb_before = scrape(metrics_lb)
    p_before = wait_for(prefill, at_rest, "prefill not at rest before")
    d_before = wait_for(decode, at_rest, "decode not at rest before")
    salt = int(time.time()) % 1000
    for i, n in enumerate(PROMPT_LENS):
        stream(metrics_lb, prompt(n, salt + i))
    n_req = len(PROMPT_LENS)

    # prefill: one KV transfer per request, of exactly the prompt's pages
    p_after = wait_for(prefill, lambda s: at_rest(s) and delta(
        p_before, s, "sglang:kv_transfer_total_mb_count") >= n_req, "transfers not observed")
    info = requests.get(prefill + "/get_server_info", timeout=10).json()
    ps, bpt = info["page_size"], kv_bytes_per_token(tiny_model, info["kv_cache_storage_dtype"])
    assert bpt == info["kv_bytes_per_token"]
    sent_mb = sum(math.ceil(n / ps) * ps * bpt for n in PROMPT_LENS) / (1 << 20)
    for name in ["kv_transfer_total_mb", "kv_transfer_speed_gb_s", "kv_transfer_latency_ms",
                 "kv_transfer_bootstrap_ms"]:
        assert delta(p_before, p_after, f"sglang:{name}_count") == n_req, name
        assert delta(p_before, p_after, f"sglang:{name}_sum") > 0, name
    assert delta(p_before, p_after, "sglang:kv_transfer_total_mb_sum") == pytest.approx(sent_mb)
    listed = {f"sglang:{g}" for g in ZERO_AT_REST + ["token_usage", "cache_hit_rate",
                                                     "gen_throughput"]}
    listed |= {"sglang:num_bootstrap_failed_reqs_total", "sglang:num_transfer_failed_reqs_total",
               "sglang:prompt_tokens_total", "sglang:generation_tokens_total",
               "sglang:time_to_first_token_seconds_count",
               "sglang:e2e_request_latency_seconds_count",
               "sglang:inter_token_latency_seconds_count", "sglang:num_requests_total"}
    assert listed <= names(p_after) and listed <= names(scrape(decode))
    for name in ["sglang:num_bootstrap_failed_reqs_total", "sglang:num_transfer_failed_reqs_total"]:
        assert delta(p_before, p_after, name) == 0
    # the prefill's HTTP side: the whole prompts, one token each, and no TTFT (as SGLang)
    assert delta(p_before, p_after, "sglang:prompt_tokens_total") == sum(PROMPT_LENS)
    assert delta(p_before, p_after, "sglang:generation_tokens_total") == n_req
    assert delta(p_before, p_after, "sglang:time_to_first_token_seconds_count") == 0
    assert val(p_after, "sglang:num_running_reqs", engine_type="prefill") == 0

    # decode: the client's view of every request; its queues empty again
    d_after = wait_for(decode, at_rest, "decode not at rest after")
    check_request_metrics(d_before, d_after, n_req, sum(PROMPT_LENS))
    assert val(d_after, "sglang:num_decode_prealloc_queue_reqs", engine_type="decode") == 0
    assert delta(d_before, d_after, "sglang:kv_transfer_total_mb_count") == 0

    # mini_lb: every request counted per route and per worker, refusals as errors
    bad = requests.post(metrics_lb + "/generate", timeout=60, json={
        "text": "hi", "sampling_params": {"max_new_tokens": -1}})
    assert bad.status_code == 400, bad.text
    junk = requests.post(metrics_lb + "/generate", data=b"{not json", timeout=60)
    assert junk.status_code == 400
    lb = scrape(metrics_lb)
    route = {"route": "/generate"}
    assert delta(lb_before, lb, "sgl_router_requests_total", **route) == n_req + 2
    assert delta(lb_before, lb, "sgl_router_pd_requests_total", **route) == n_req + 1
    assert delta(lb_before, lb, "sgl_router_pd_prefill_requests_total", worker=prefill) == n_req + 1
    assert delta(lb_before, lb, "sgl_router_pd_decode_requests_total", worker=decode) == n_req + 1
    duration = "sgl_router_pd_request_duration_seconds_count"
    assert delta(lb_before, lb, duration, **route) == n_req + 1
    assert delta(lb_before, lb, "sgl_router_request_errors_total", error_type="400") == 2
    assert delta(lb_before, lb, "sgl_router_pd_errors_total", error_type="400") == 1
    assert val(lb, "sgl_router_running_requests") == 0
    for url in (prefill, decode):
        assert_pool_whole(url)


def test_mini_lb_metrics_404_without_the_flag(cluster):
    assert requests.get(cluster.url + "/metrics", timeout=10).status_code == 404


def test_pd_failure_counters(cluster):
    """A prefill and a decode given one room for prompts of different page counts: the prefill
    refuses the decode's pages, and both count one transfer failure (none at bootstrap)."""
    from concurrent.futures import ThreadPoolExecutor

    prefill, decode = cluster.prefills[0].url, cluster.decodes[0].url
    p_before, d_before = scrape(prefill), scrape(decode)
    room = int(time.time() * 1000) % (1 << 40)
    pd = {"bootstrap_host": "127.0.0.1", "bootstrap_port": cluster.bootstrap_ports[0],
          "bootstrap_room": room, "sampling_params": {"max_new_tokens": 4}}

    def post(url: str, n: int) -> int:
        body = {"input_ids": prompt(n, room % 997), **pd}
        return requests.post(url + "/generate", json=body, timeout=120).status_code

    with ThreadPoolExecutor(2) as ex:
        statuses = list(ex.map(post, [prefill, decode], [13, 30]))
    assert all(s >= 500 for s in statuses), statuses
    p_after = wait_for(prefill, lambda s: delta(
        p_before, s, "sglang:num_transfer_failed_reqs_total") >= 1, "prefill failure")
    d_after = wait_for(decode, lambda s: delta(
        d_before, s, "sglang:num_transfer_failed_reqs_total") >= 1, "decode failure")
    for before, after in ((p_before, p_after), (d_before, d_after)):
        assert delta(before, after, "sglang:num_transfer_failed_reqs_total") == 1
        assert delta(before, after, "sglang:num_bootstrap_failed_reqs_total") == 0
        assert delta(before, after, "sglang:num_aborted_requests_total") == 1
    assert delta(p_before, p_after, "sglang:kv_transfer_total_mb_count") == 0
    for url in (prefill, decode):
        assert_pool_whole(url, timeout=40)
