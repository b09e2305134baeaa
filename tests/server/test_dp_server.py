"""``launch_server --dp-size 2`` (two scheduler replicas behind one HTTP server) against the
session's unified dp=1 reference: same greedy answers for concurrent requests, spread evenly by
round robin (each replica's own request counter in /get_server_info), /get_load and /v1/loads
per replica, /flush_cache reaching both, both pools whole, /metrics with a dp_rank label; then
one replica killed makes the server answer 503 naming it. Also the flags' validation and the
replica choice (unit)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pool_checks import assert_pool_whole, pool_states
from rank_checks import kill_and_await_503

from sglang.srt.managers.data_parallel_controller import pick_replica
from sglang.srt.server_args import ServerArgs
from sglang.test.server_utils import launch_server

# The reference server's arguments (tests/conftest.py REFERENCE_ARGS).
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024"]
STORY = ("Once upon a time there was a little robot who lived in a quiet town by the sea. "
         "Every morning it walked to the harbour and counted the boats. ")
PROMPTS = ["Hello, my name is", STORY + "One day", STORY + "The boats", "The capital of France is",
           STORY * 2 + "In the end", "Tell me a story", "Why is the sky blue?", "1, 2, 3,"]


@pytest.fixture(scope="module")
def dp2(tiny_model, log_dir):
    proc = launch_server(tiny_model, log_dir, "dp2", [*ARGS, "--dp-size", "2", "--enable-metrics"],
                         {"SGLANG_DEAD_SCHEDULER_EXIT_DELAY": "60"})
    yield proc
    proc.stop()


def _generate(url: str, text: str) -> list[int]:
    r = requests.post(url + "/generate", timeout=120, json={
        "text": text, "sampling_params": {"temperature": 0, "max_new_tokens": 12}})
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


def _answers(url: str) -> list[list[int]]:
    with ThreadPoolExecutor(len(PROMPTS)) as ex:  # concurrent: batched on the server(s)
        return list(ex.map(lambda p: _generate(url, p), PROMPTS))


def _received(url: str) -> list[int]:
    return [s["num_received_reqs"] for s in pool_states(url)]


def test_dp2_answers_equal_dp1_and_spreads_requests(dp2, unified):
    before = _received(dp2.url)
    assert _answers(dp2.url) == _answers(unified)
    after = _received(dp2.url)
    half = len(PROMPTS) // 2  # round robin: exactly half each
    assert [a - b for a, b in zip(after, before)] == [half, half]
    info = requests.get(dp2.url + "/get_server_info", timeout=10).json()
    assert (info["dp_size"], info["load_balance_method"]) == (2, "round_robin")
    assert [s["dp_rank"] for s in info["internal_states"]] == [0, 1]
    load = requests.get(dp2.url + "/get_load", timeout=10).json()
    assert [ld["dp_rank"] for ld in load] == [0, 1]
    states = [assert_pool_whole(dp2.url)] + pool_states(dp2.url)[1:]
    assert all(s["kv_pool"]["cached_pages"] > 0 for s in states)  # both cached prefixes
    v1 = requests.get(dp2.url + "/v1/loads", params={"dp_rank": "1"}, timeout=10).json()
    assert v1["dp_rank_count"] == 2 and [ld["dp_rank"] for ld in v1["loads"]] == [1]
    bad = requests.get(dp2.url + "/v1/loads", params={"dp_rank": "2"}, timeout=10)
    assert bad.status_code == 400 and "[0, 2)" in bad.json()["error"]["message"]
    assert requests.post(dp2.url + "/flush_cache", timeout=10).status_code == 200
    assert [s["kv_pool"]["cached_pages"] for s in pool_states(dp2.url)] == [0, 0]
    metrics = requests.get(dp2.url + "/metrics", timeout=10).text  # one series per replica
    pools = re.findall(r'^sglang:max_total_num_tokens\{dp_rank="(\d)".* (\S+)$', metrics, re.M)
    assert sorted(pools) == [("0", "4096.0"), ("1", "4096.0")], metrics[:2000]


def test_killed_replica_makes_the_server_answer_503(dp2):
    pids = dict(re.findall(r"DP rank (\d) of 2, TP rank 0: pid (\d+)", dp2.log_tail(400)))
    assert set(pids) == {"0", "1"}, dp2.log_tail(40)
    r = kill_and_await_503(dp2.url, int(pids["1"]))  # expected within ~1 s
    assert r.status_code == 503, r.text
    assert "scheduler process of DP rank 1 exited" in r.text
    assert requests.get(dp2.url + "/health", timeout=30).status_code == 503
    assert dp2.alive()  # the HTTP process keeps answering (until the exit delay above)


@pytest.mark.parametrize("kwargs,needle", [
    ({"dp_size": 0}, "--dp-size must be >= 1, got 0"),
    ({"load_balance_method": "shortest_queue"},
     "--load-balance-method must be one of round_robin, follow_bootstrap_room"),
    ({"dp_size": 2, "tp_size": 2, "nnodes": 2, "dist_init_addr": "127.0.0.1:5000"},
     "--dp-size 2 with --nnodes 2"),
])
def test_bad_dp_flags(kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        ServerArgs(model_path="m", **kwargs)


def test_prefill_follows_the_bootstrap_room():
    args = ServerArgs(model_path="m", dp_size=2, disaggregation_mode="prefill")
    assert args.load_balance_method == "follow_bootstrap_room"
    assert ServerArgs(model_path="m", dp_size=2).load_balance_method == "round_robin"
    assert [pick_replica("follow_bootstrap_room", r, 0, 3) for r in (7, 9, 11)] == [1, 0, 2]
    assert pick_replica("follow_bootstrap_room", None, 4, 3) == 1  # no room: round robin
    assert [pick_replica("round_robin", 7, c, 2) for c in range(3)] == [0, 1, 0]
