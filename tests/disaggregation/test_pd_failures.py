"""PD failures end the affected requests with a clear error and free their pages on both sides.

Real server processes (Mooncake over TCP). Short timeouts and heartbeats through the
SGLANG_DISAGGREGATION_* environment knobs.
"""

from __future__ import annotations

import random
import time

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import free_port, launch_pd_cluster, launch_server

ENV = {
    "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "3",
    "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "3",
    "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
    "SGLANG_DISAGGREGATION_BOOTSTRAP_FETCH_ATTEMPTS": "3",
    # a dead prefill never acknowledges an abort: its requests' decode pages wait this long
    "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT": "3",
}
ARGS = ["--page-size", "4", "--max-total-tokens", "2048", "--chunked-prefill-size", "32"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}


def room() -> int:
    return random.randrange(1, 2**63)


def error_message(r: requests.Response) -> str:
    body = r.json()
    if "error" in body:
        return body["error"]["message"]
    return body["meta_info"]["finish_reason"]["message"]


@pytest.fixture(scope="module")
def cluster(tiny_model, log_dir):
    c = launch_pd_cluster(tiny_model, f"{log_dir}/failures", "mooncake", args=ARGS, env=ENV)
    yield c
    c.stop()


def test_bad_request_through_the_lb_is_400_and_leaks_nothing(cluster):
    r = requests.post(cluster.url + "/generate", json={"text": ""}, timeout=30)
    assert r.status_code == 400
    r = requests.post(cluster.url + "/generate", data=b"{oops", timeout=30)
    assert r.status_code == 400
    ok = requests.post(cluster.url + "/generate",
                       json={"text": "Once upon a time", "sampling_params": GREEDY}, timeout=60)
    assert ok.status_code == 200
    for p in cluster.prefills + cluster.decodes:
        assert_pool_whole(p.url)


def test_prefill_whose_decode_never_comes_times_out(cluster):
    prefill = cluster.prefills[0]
    r = requests.post(prefill.url + "/generate", json={
        "text": "Once upon a time", "sampling_params": GREEDY, "bootstrap_host": "127.0.0.1",
        "bootstrap_port": cluster.bootstrap_ports[0], "bootstrap_room": room()}, timeout=60)
    assert r.status_code >= 500
    assert "Bootstrapping" in error_message(r)
    assert_pool_whole(prefill.url)


def test_decode_whose_prefill_never_sends_times_out(cluster):
    decode = cluster.decodes[0]
    r = requests.post(decode.url + "/generate", json={
        "text": "Once upon a time", "sampling_params": GREEDY, "bootstrap_host": "127.0.0.1",
        "bootstrap_port": cluster.bootstrap_ports[0], "bootstrap_room": room()}, timeout=60)
    assert r.status_code >= 500
    assert "WaitingForInput" in error_message(r)
    assert_pool_whole(decode.url)
    assert_pool_whole(cluster.prefills[0].url)


def test_decode_pointed_at_a_missing_prefill_fails_fast(cluster):
    decode = cluster.decodes[0]
    t0 = time.time()
    r = requests.post(decode.url + "/generate", json={
        "text": "Once upon a time", "sampling_params": GREEDY, "bootstrap_host": "127.0.0.1",
        "bootstrap_port": free_port(), "bootstrap_room": room()}, timeout=60)
    assert r.status_code >= 500 and time.time() - t0 < 30
    assert "handshake" in error_message(r).lower()
    assert_pool_whole(decode.url)


def test_page_size_mismatch_is_refused_at_the_handshake(cluster, tiny_model, log_dir):
    """A page-size-1 decode against the module cluster's page-size-4 prefill."""
    prefill, bport = cluster.prefills[0], cluster.bootstrap_ports[0]
    decode = launch_server(tiny_model, log_dir, "mm-decode",
                           ["--disaggregation-mode", "decode", "--page-size", "1",
                            "--max-total-tokens", "2048"], ENV)
    try:
        r = requests.post(decode.url + "/generate", json={
            "text": "Once upon a time", "sampling_params": GREEDY, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": bport, "bootstrap_room": room()}, timeout=60)
        assert r.status_code >= 500
        msg = error_message(r)
        assert "page size" in msg and "4" in msg and "1" in msg, msg
        assert_pool_whole(decode.url)
        assert_pool_whole(prefill.url)
    finally:
        decode.stop()
