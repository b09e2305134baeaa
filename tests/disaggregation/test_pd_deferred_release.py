"""A decode request given up on while its prefill is still writing its KV keeps its pages out of
the free list until the prefill acknowledges the abort, or, when no ack can come (the prefill
was killed), until SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT; then every page
comes back.

Real servers (Mooncake over TCP), requests sent straight to a prefill and a decode with the same
bootstrap room. The prefills hold each KV write in flight with the test-only
SGLANG_TEST_DISAGG_TRANSFER_DELAY knob.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable

import pytest
import requests

from pool_checks import assert_pool_whole, pool_state
from sglang.test.server_utils import free_port, launch_server, wait_all

ARGS = ["--page-size", "4", "--max-total-tokens", "2048", "--chunked-prefill-size", "32"]
DECODE_ENV = {
    "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT": "8",
    "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
}
# two prompt chunks, each written after the delay
PROMPT = ("The river ran past the old mill, and the children who lived in the village liked to "
          "watch the water turn the wheel. In the morning the baker opened the door.")
GREEDY = {"temperature": 0, "max_new_tokens": 8}


def pd_state(url: str) -> dict[str, Any]:
    return pool_state(url)["disaggregation"]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.time() < deadline, f"never saw: {what}"
        time.sleep(0.05)


def prefill_server(tiny_model, log_dir, name, delay):
    """A prefill whose KV writes each wait ``delay`` s, just started: (Proc, bootstrap port)."""
    bport = free_port()
    proc = launch_server(tiny_model, log_dir, name,
                         ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port",
                          str(bport), *ARGS], {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": str(delay)},
                         wait=False)
    return proc, bport


@pytest.fixture(scope="module")
def servers(tiny_model, log_dir):
    """The module's three servers, started at once: the decode, and a prefill for each test."""
    procs = {"held": prefill_server(tiny_model, log_dir, "held-prefill", 2),
             "doomed": prefill_server(tiny_model, log_dir, "doomed-prefill", 60)}
    procs["decode"] = (launch_server(tiny_model, log_dir, "held-decode",
                                     ["--disaggregation-mode", "decode", *ARGS], DECODE_ENV,
                                     wait=False), 0)
    wait_all([p for p, _ in procs.values()])
    yield procs
    for p, _ in procs.values():
        p.stop()


@pytest.fixture(scope="module")
def decode(servers):
    return servers["decode"][0]


def start_pair(prefill_url: str, decode_url: str, bport: int, rid: str) -> dict[str, Any]:
    """Send one request to both servers in background threads; their responses land in the
    returned dict under "prefill" and "decode"."""
    room = random.randrange(1, 2**63)
    fields = {"bootstrap_host": "127.0.0.1", "bootstrap_port": bport, "bootstrap_room": room}
    results: dict[str, Any] = {}

    def post(key: str, url: str, body: dict) -> None:
        try:
            results[key] = requests.post(url + "/generate", json=body, timeout=300)
        except requests.RequestException as e:  # a killed server
            results[key] = e

    body = {"text": PROMPT, "sampling_params": GREEDY, **fields}
    threads = [threading.Thread(target=post, args=("prefill", prefill_url, body)),
               threading.Thread(target=post, args=("decode", decode_url, {**body, "rid": rid}))]
    for t in threads:
        t.start()
    results["threads"] = threads
    return results


def held_pages_seen(decode_url: str) -> int:
    """Wait until the decode holds the request's pages; check they are out of the free list."""
    state = wait_for("the decode holding pages", lambda: (
        s if (s := pool_state(decode_url))["disaggregation"]["held_reqs"] == 1 else None))
    pool, pd = state["kv_pool"], state["disaggregation"]
    assert pd["held_pages"] >= 2  # the prompt spans several pages
    assert pool["free_pages"] + pd["held_pages"] <= pool["total_pages"]
    assert state["num_running_reqs"] == 0 and pd["transfer_queue"] == 0  # the request is over
    return pd["held_pages"]


def test_abort_during_transfer_holds_pages_until_the_prefill_acks(decode, servers):
    prefill, bport = servers["held"]
    try:
        before = pd_state(decode.url)
        rid = f"held-{random.getrandbits(32)}"
        res = start_pair(prefill.url, decode.url, bport, rid)
        # the prefill ran its prompt and queued the writes: one of them is in its delay now
        wait_for("the prefill's writes queued", lambda: pd_state(prefill.url)["inflight_queue"])
        assert pd_state(decode.url)["transfer_queue"] == 1
        assert requests.post(decode.url + "/abort_request", json={"rid": rid},
                             timeout=30).status_code == 200
        held_pages_seen(decode.url)
        after = wait_for("the pages released", lambda: (
            s if (s := pd_state(decode.url))["held_reqs"] == 0 else None))
        assert after["held_released_on_ack"] == before["held_released_on_ack"] + 1
        assert after["held_released_on_timeout"] == before["held_released_on_timeout"]
        assert after["held_pages"] == 0
        for t in res["threads"]:
            t.join(120)
        assert res["decode"].status_code == 499 and "Aborted" in res["decode"].text
        # the decode's abort ended it there too, with the same status (issue 11 finding 6)
        assert res["prefill"].status_code == 499 and "Aborted" in res["prefill"].text
        assert_pool_whole(decode.url)
        assert_pool_whole(prefill.url)
        # and the decode serves the next request through the same prefill
        res = start_pair(prefill.url, decode.url, bport, f"after-{random.getrandbits(32)}")
        for t in res["threads"]:
            t.join(120)
        assert res["decode"].status_code == 200, res["decode"].text
        assert_pool_whole(decode.url)
    finally:
        prefill.stop()


def test_pages_of_a_killed_prefill_come_back_after_the_timeout(decode, servers):
    prefill, bport = servers["doomed"]
    try:
        before = pd_state(decode.url)
        res = start_pair(prefill.url, decode.url, bport, f"doomed-{random.getrandbits(32)}")
        wait_for("the prefill's writes queued", lambda: pd_state(prefill.url)["inflight_queue"])
        prefill.kill()  # no ack will ever come; the heartbeat fails the request
        res["threads"][1].join(120)
        assert res["decode"].status_code >= 500
        assert "Lost connection with prefill" in res["decode"].text
        held_pages_seen(decode.url)
        after = wait_for("the pages released", lambda: (
            s if (s := pd_state(decode.url))["held_reqs"] == 0 else None))
        assert after["held_released_on_timeout"] == before["held_released_on_timeout"] + 1
        assert after["held_released_on_ack"] == before["held_released_on_ack"]
        assert_pool_whole(decode.url)
    finally:
        prefill.stop()
