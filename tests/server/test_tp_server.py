"""``launch_server --tp-size 2`` (two scheduler processes, gloo) against the session's tp=1
reference server: same greedy answers for concurrent requests that chunk (prompts longer than
the 32-token chunk) and hit the prefix cache, tp_size in /get_server_info, the KV pool whole
afterwards; then a rank killed makes the server answer 503 instead of hanging. Two simulated
nodes (``--nnodes 2``, each on its own loopback address) serve the same answers, their gloo ranks
listen on their node's address (none on 127.0.0.1), and node 1 exits once node 0 is gone."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from pool_checks import assert_pool_whole
from rank_checks import kill_and_await_503, rank_gone

from sglang.srt.utils.network import free_port
from sglang.test.server_utils import launch_server, start

# The reference server's arguments (tests/conftest.py REFERENCE_ARGS).
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024"]
STORY = ("Once upon a time there was a little robot who lived in a quiet town by the sea. "
         "Every morning it walked to the harbour and counted the boats. ")
PROMPTS = [
    "Hello, my name is",
    STORY + "One day",  # > 32 tokens: chunked prefill
    STORY + "The boats",  # shares STORY's pages with the previous one: a prefix hit
    STORY * 2 + "In the end",
    "The capital of France is",
]


@pytest.fixture(scope="module")
def tp2(tiny_model, log_dir):
    # a dead rank's server exits 1 s after its 503s begin (5 s by default)
    proc = launch_server(tiny_model, log_dir, "tp2", [*ARGS, "--tp-size", "2"],
                         {"SGLANG_DEAD_SCHEDULER_EXIT_DELAY": "1"})
    yield proc
    proc.stop()


def _generate(url: str, text: str) -> dict:
    r = requests.post(url + "/generate", timeout=120, json={
        "text": text, "sampling_params": {"temperature": 0, "max_new_tokens": 16}})
    assert r.status_code == 200, r.text
    return r.json()


def _answers(url: str) -> list[tuple[str, list[int]]]:
    with ThreadPoolExecutor(len(PROMPTS)) as ex:  # concurrent: batched on the server
        outs = list(ex.map(lambda p: _generate(url, p), PROMPTS))
    return [(o["text"], o["output_ids"]) for o in outs]


def test_tp2_answers_equal_tp1(tp2, unified):
    want = _answers(unified)
    got = _answers(tp2.url)
    assert got == want
    again = _answers(tp2.url)  # every prompt now hits the prefix cache
    assert again == want
    info = requests.get(tp2.url + "/get_server_info", timeout=10).json()
    assert info["tp_size"] == 2
    state = assert_pool_whole(tp2.url)  # on rank 1 too (``tp_ranks``)
    assert state["kv_pool"]["cached_pages"] > 0  # the prefixes were cached (and hit above)
    # rank 1 schedules what rank 0 does: its pool holds the same pages
    assert [r["tp_rank"] for r in state["tp_ranks"]] == [1]
    assert state["tp_ranks"][0]["kv_pool"] == state["kv_pool"]


def test_killed_rank_makes_the_server_answer_503(tp2):
    pids = dict(re.findall(r"TP rank (\d) of 2 joined .*pid (\d+)", tp2.log_tail(400)))
    assert set(pids) == {"0", "1"}, tp2.log_tail(40)
    r = kill_and_await_503(tp2.url, int(pids["1"]))  # expected within ~2 s
    assert r.status_code == 503, r.text
    assert "the scheduler process of TP rank 1 exited (code -9)" in r.text, r.text
    assert rank_gone(int(pids["0"])), "rank 0 still runs"  # it exited too (and was reaped)
    # then the whole server exits with code 1 (after SGLANG_DEAD_SCHEDULER_EXIT_DELAY)
    assert tp2.popen.wait(60) == 1, tp2.log_tail(20)
    assert "exiting: the scheduler is gone" in tp2.log_tail(40)


def _listeners(pid: int) -> set[tuple[str, int]]:
    root = psutil.Process(pid)
    return {(c.laddr.ip, c.laddr.port) for p in (root, *root.children(recursive=True))
            for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_two_nodes_answer_as_one(tiny_model, log_dir, unified):
    dist = f"127.0.0.2:{free_port('127.0.0.2')}"
    nodes = []
    for rank, host in enumerate(("127.0.0.2", "127.0.0.3")):
        port = free_port(host)
        argv = ["-m", "sglang.launch_server", "--model-path", tiny_model, *ARGS, "--tp-size", "2",
                "--nnodes", "2", "--node-rank", str(rank), "--dist-init-addr", dist,
                "--host", host, "--port", str(port)]
        nodes.append((f"node{rank}", argv, f"http://{host}:{port}", f"{log_dir}/nodes"))
    with ThreadPoolExecutor(2) as ex:  # each waits for the other's ranks
        futs = [ex.submit(start, *n) for n in nodes]
        node0, node1 = [f.result() for f in futs]
    try:
        assert _answers(node0.url) == _answers(unified)
        info = requests.get(node0.url + "/get_server_info", timeout=10).json()
        assert (info["tp_size"], info["nnodes"], info["dist_init_addr"]) == (2, 2, dist)
        assert requests.post(node1.url + "/generate", json={"text": "hi"}).status_code == 404
        for node, host in ((node0, "127.0.0.2"), (node1, "127.0.0.3")):
            socks = _listeners(node.popen.pid)
            assert not [s for s in socks if s[0] == "127.0.0.1"], socks
            http_port = int(node.url.rsplit(":", 1)[1])
            assert [s for s in socks if s[0] == host and s[1] != http_port], socks  # gloo's
        node0.stop()
        deadline = time.time() + 30  # node 1's rank fails its next collective: ~1 s
        while node1.alive() and time.time() < deadline:
            time.sleep(0.5)
        assert not node1.alive(), node1.log_tail(20)
    finally:
        node0.stop()
        node1.stop()
