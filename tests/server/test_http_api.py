"""A real server process on loopback: native /generate, admin routes, bad input, aborts."""

from __future__ import annotations

import json
import time

import pytest
import requests

from pool_checks import assert_pool_whole, pool_state
from sglang.test.server_utils import launch_server

GREEDY = {"temperature": 0, "max_new_tokens": 16}


@pytest.fixture(scope="module")
def server(tiny_model, log_dir):
    proc = launch_server(tiny_model, log_dir, "unified",
                         ["--max-total-tokens", "2048", "--chunked-prefill-size", "64",
                          "--context-length", "4096"])
    yield proc.url
    proc.stop()


@pytest.fixture(autouse=True)
def pool_whole_after(server):
    yield
    assert_pool_whole(server)


def gen(url, **body):
    return requests.post(url + "/generate", json=body, timeout=120)


def test_generate_single_and_batch(server):
    one = gen(server, text="Once upon a time", sampling_params=GREEDY).json()
    assert one["text"] and len(one["output_ids"]) == one["meta_info"]["completion_tokens"]
    m = one["meta_info"]
    assert m["prompt_tokens"] > 0 and m["finish_reason"]["type"] in ("length", "stop")
    assert m["id"] and m["e2e_latency"] > 0
    batch = gen(server, text=["Once upon a time", "The baker"], sampling_params=GREEDY).json()
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[0]["output_ids"] == one["output_ids"]
    by_ids = gen(server, input_ids=[[5, 6, 7], [8, 9]], sampling_params=GREEDY).json()
    assert [b["meta_info"]["prompt_tokens"] for b in by_ids] == [3, 2]


def test_stream_concatenates_to_the_same_answer(server):
    full = gen(server, text="The lighthouse keeper", sampling_params=GREEDY).json()
    r = requests.post(server + "/generate", json={"text": "The lighthouse keeper",
                      "sampling_params": GREEDY, "stream": True}, stream=True, timeout=120)
    chunks = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunks.append(json.loads(line[6:]))
    assert len(chunks) > 1
    assert chunks[-1]["text"] == full["text"]
    assert chunks[-1]["output_ids"] == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_stop_conditions(server):
    base = gen(server, text="Once upon a time", sampling_params={**GREEDY, "max_new_tokens": 20})
    ids, text = base.json()["output_ids"], base.json()["text"]
    stop_tok = ids[3]
    r = gen(server, text="Once upon a time",
            sampling_params={**GREEDY, "stop_token_ids": [stop_tok]}).json()
    assert r["output_ids"][-1] == stop_tok and r["meta_info"]["finish_reason"]["type"] == "stop"
    word = text.split()[2]
    r = gen(server, text="Once upon a time", sampling_params={**GREEDY, "stop": word}).json()
    assert word not in r["text"] and r["meta_info"]["finish_reason"]["matched"] == word
    r = gen(server, text="Once upon a time",
            sampling_params={**GREEDY, "max_new_tokens": 40, "ignore_eos": True}).json()
    assert r["meta_info"]["completion_tokens"] == 40


def test_sampling_seed_is_reproducible(server):
    sp = {"temperature": 1.5, "top_p": 0.95, "top_k": 50, "max_new_tokens": 24, "seed": 7}
    a = gen(server, text="The baker", sampling_params=sp).json()["output_ids"]
    b = gen(server, text="The baker", sampling_params=sp).json()["output_ids"]
    c = gen(server, text="The baker", sampling_params={**sp, "seed": 8}).json()["output_ids"]
    assert a == b and a != c


def test_logprobs_fields(server):
    r = gen(server, text="Once upon a time", sampling_params=GREEDY, return_logprob=True,
            top_logprobs_num=2, logprob_start_len=0).json()
    m = r["meta_info"]
    assert len(m["output_token_logprobs"]) == m["completion_tokens"]
    assert len(m["input_token_logprobs"]) == m["prompt_tokens"]
    assert all(len(t) == 2 for t in m["output_top_logprobs"])
    assert all(lp <= 0 for lp, _, _ in m["output_token_logprobs"])


@pytest.mark.parametrize("body,needle", [
    (b"{not json", "malformed JSON"),
    (b'{"text": 5}', "text"),
    (b'{"text": ""}', "empty"),
    (b'{"text": "hi", "sampling_params": {"temperature": -1}}', "temperature"),
    (b'{"text": "hi", "sampling_params": {"top_p": 2}}', "top_p"),
    (b'{"text": "hi", "sampling_params": {"max_new_tokens": "ten"}}', "max_new_tokens"),
    (b'{"text": "hi", "sampling_params": {"bogus": 1}}', "bogus"),
    (b'{"input_ids": [1, -3]}', "input_ids"),
    (b'{"input_ids": []}', "input_ids"),
    (b'{"text": "hi", "stream": "yes"}', "stream"),
])
def test_bad_input_gets_400_with_a_message(server, body, needle):
    r = requests.post(server + "/generate", data=body, timeout=30)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_prompt_longer_than_context_or_pool(server):
    r = gen(server, input_ids=[5] * 5000, sampling_params=GREEDY)
    assert r.status_code == 400 and "context length" in r.json()["error"]["message"]
    r = gen(server, input_ids=[5] * 5000, sampling_params=GREEDY, stream=True)
    assert r.status_code == 400
    r = gen(server, input_ids=[5] * 3000, sampling_params=GREEDY)
    assert r.status_code == 400 and "KV pool" in r.json()["error"]["message"]
    assert gen(server, text="still serving", sampling_params=GREEDY).status_code == 200


def test_admin_routes(server):
    assert requests.get(server + "/health", timeout=10).status_code == 200
    assert requests.get(server + "/health_generate", timeout=60).status_code == 200
    info = requests.get(server + "/get_model_info", timeout=10).json()
    assert info["is_generation"] and info["model_path"]
    gen(server, text="The river ran past the old mill", sampling_params=GREEDY)
    assert pool_state(server)["kv_pool"]["cached_pages"] > 0
    assert requests.post(server + "/flush_cache", timeout=10).status_code == 200
    assert pool_state(server)["kv_pool"]["cached_pages"] == 0


LONG = {"max_new_tokens": 1500, "ignore_eos": True}


@pytest.fixture(scope="module")
def slow_server(tiny_model, log_dir):
    """Each step takes at least 10 ms, so LONG lasts 15 s or more: on a loaded machine the tiny
    model otherwise finishes it before the HTTP process sees the client hang up."""
    proc = launch_server(tiny_model, log_dir, "slow-steps", ["--max-total-tokens", "2048"],
                         env={"SGLANG_TEST_STEP_DELAY": "0.01"})
    yield proc.url
    assert_pool_whole(proc.url)
    proc.stop()


def stream_lines(server, **body):
    resp = requests.post(server + "/generate", json={**body, "stream": True}, stream=True,
                         timeout=60)
    assert resp.status_code == 200
    return resp, (line for line in resp.iter_lines() if line.startswith(b"data: "))


def test_abort_request_ends_a_running_request(slow_server):
    server = slow_server
    resp, lines = stream_lines(server, text="Once", rid="abort-me", sampling_params=LONG)
    next(lines)
    requests.post(server + "/abort_request", json={"rid": "abort-me"}, timeout=10)
    last = [json.loads(x[6:]) for x in lines if x != b"data: [DONE]"][-1]
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["completion_tokens"] < LONG["max_new_tokens"]


def test_client_disconnect_aborts_its_request(slow_server):
    server = slow_server
    before = pool_state(server)["forward_ct"]
    resp, lines = stream_lines(server, text="Once", sampling_params=LONG)
    next(lines)
    resp.close()
    deadline = time.time() + 30
    while time.time() < deadline and pool_state(server)["num_running_reqs"]:
        time.sleep(0.05)
    state = pool_state(server)
    assert state["num_running_reqs"] == 0
    # the request stopped early: far fewer decode steps than it asked for
    assert state["forward_ct"] - before < LONG["max_new_tokens"] // 2


def test_many_concurrent_requests_in_a_small_pool_are_all_right(tiny_model, log_dir):
    """A pool too small for everyone forces waiting and retraction; answers stay exact."""
    from concurrent.futures import ThreadPoolExecutor

    small = launch_server(tiny_model, log_dir, "small-pool",
                          ["--max-total-tokens", "160", "--page-size", "4"])
    try:
        prompts = [f"Once upon a time number {i}" for i in range(8)]
        sp = {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True}
        alone = [gen(small.url, text=p, sampling_params=sp).json()["output_ids"] for p in prompts]
        with ThreadPoolExecutor(8) as ex:
            together = list(ex.map(
                lambda p: gen(small.url, text=p, sampling_params=sp).json()["output_ids"],
                prompts))
        assert together == alone
        assert_pool_whole(small.url)
    finally:
        small.stop()
