"""mini_lb routes around trouble (issue 11): health checks take a dead server out of rotation and
bring it back, a failed attempt is retried once on another pair with its other leg aborted, a
circuit breaker stops sending to a failing server, a decode dying mid-stream ends the client's
stream with an error event and aborts the prefill, and a side with no healthy server is a 503.

One cluster of real processes for the module (Mooncake over TCP): prefill0, prefill1 (started
with every KV transfer failing, SGLANG_TEST_DISAGG_FAILURE_PROB=1, later killed and restarted
healthy on its ports), decode0 (slowed a little so a stream can be cut), mini_lb with health
checks every 0.5 s. The tests run in file order and share the cluster's story.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pool_checks import assert_pool_whole, pool_state
from sglang.srt.disaggregation.lb.health import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerConfig,
    CircuitBreaker,
    HealthConfig,
    HealthState,
)
from sglang.test.server_utils import free_port, start

ENV = {
    "SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "30",
    "SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "30",
    "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5",
    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
    "SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT": "3",
}
ARGS = ["--page-size", "4", "--max-total-tokens", "4096", "--chunked-prefill-size", "32",
        "--context-length", "1024", "--disaggregation-transfer-backend", "mooncake"]
LB_ARGS = ["--health-check-interval-secs", "0.5", "--health-check-timeout-secs", "2",
           "--health-failure-threshold", "3", "--health-success-threshold", "2",
           "--cb-failure-threshold", "2", "--cb-success-threshold", "1",
           "--cb-timeout-duration-secs", "2", "--timeout", "60", "--enable-metrics"]
GREEDY = {"temperature": 0, "max_new_tokens": 8}
SLOW_WRITES = {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": "0.5"}  # the restarted prefill1: aborts land
PROMPTS = ["Once upon a time", "The capital of France is", "1 2 3 4 5", "Hello there, my name"]


# ---- (e) pure logic: the health and circuit-breaker state machines ---------------------------
def test_health_state_machine():
    h = HealthState(HealthConfig(failure_threshold=3, success_threshold=2))
    assert h.record(False) is None and h.record(False) is None and h.healthy
    assert h.record(False, "refused") is False and not h.healthy and h.last_error == "refused"
    assert h.record(True) is None and not h.healthy  # one success is not enough
    assert h.record(False) is None and h.record(True) is None and not h.healthy  # count reset
    assert h.record(True) is True and h.healthy
    assert h.record(False) is None and h.record(True) is None and h.failures == 0


def test_circuit_breaker_state_machine():
    cb = CircuitBreaker(BreakerConfig(failure_threshold=3, success_threshold=2, timeout=10))
    cb.record(False, 0)
    cb.record(False, 1)
    cb.record(True, 2)  # a success resets the consecutive count
    cb.record(False, 3)
    cb.record(False, 4)
    assert cb.current(4) == CLOSED and cb.can_execute(4)
    cb.record(False, 5)
    assert cb.current(5) == OPEN and not cb.can_execute(14.9)
    assert cb.current(15) == HALF_OPEN and cb.can_execute(15)  # trial requests go through
    cb.record(False, 16)  # a failed trial opens it again, for a full timeout
    assert cb.current(25.9) == OPEN and cb.current(26) == HALF_OPEN
    cb.record(True, 27)
    assert cb.current(27) == HALF_OPEN
    cb.record(True, 28)
    assert cb.current(28) == CLOSED and cb.failures == 0
    off = CircuitBreaker(BreakerConfig(failure_threshold=1, enabled=False))
    off.record(False, 0)
    assert off.can_execute(0) and off.current(0) == CLOSED


# ---- the cluster ----------------------------------------------------------------------------
def launch_prefill(model: str, log_dir: str, name: str, port: int, bport: int, env: dict):
    argv = ["-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port), "--disaggregation-mode", "prefill",
            "--disaggregation-bootstrap-port", str(bport), *ARGS]
    return start(name, argv, f"http://127.0.0.1:{port}", log_dir, env)


def launch_decode(model: str, log_dir: str, bport: int):
    port = free_port()
    argv = ["-m", "sglang.launch_server", "--model-path", model, "--host", "127.0.0.1",
            "--port", str(port), "--disaggregation-mode", "decode",
            "--disaggregation-bootstrap-port", str(bport), *ARGS]
    return start("decode0", argv, f"http://127.0.0.1:{port}", log_dir,
                 {**ENV, "SGLANG_TEST_STEP_DELAY": "0.03"})  # a stream long enough to cut


@pytest.fixture(scope="module")
def lbc(tiny_model, log_dir):
    d = f"{log_dir}/lb-resilience"
    ports = [(free_port(), free_port()) for _ in range(2)]
    faulty = {**ENV, "SGLANG_TEST_DISAGG_FAILURE_PROB": "1"}
    with ThreadPoolExecutor(3) as pool:  # the three servers start side by side
        futures = {
            "p0": pool.submit(launch_prefill, tiny_model, d, "prefill0", *ports[0], ENV),
            "p1": pool.submit(launch_prefill, tiny_model, d, "prefill1", *ports[1], faulty),
            "d0": pool.submit(launch_decode, tiny_model, d, ports[0][1]),
        }
    procs = {k: f.result() for k, f in futures.items() if f.exception() is None}
    try:
        for f in futures.values():
            f.result()  # re-raise a start-up failure (after keeping what started, to stop it)
        lport = free_port()
        procs["lb"] = start("mini_lb", [
            "-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1", "--port",
            str(lport), "--prefill", procs["p0"].url, str(ports[0][1]), procs["p1"].url,
            str(ports[1][1]), "--decode", procs["d0"].url, *LB_ARGS],
            f"http://127.0.0.1:{lport}", d)
        yield {"procs": procs, "ports": ports, "model": tiny_model, "dir": d}
    finally:
        for p in procs.values():
            p.stop()


def gen(url: str, text: str, **kw) -> requests.Response:
    return requests.post(url + "/generate", timeout=90,
                         json={"text": text, "sampling_params": GREEDY, **kw})


def worker(lb: str, url: str) -> dict:
    states = requests.get(lb + "/workers", timeout=10).json()
    return next(w for role in states.values() for w in role if w["url"] == url)


def metric(lb: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in requests.get(lb + "/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(p in line for p in want.split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait(cond, timeout: float) -> float:
    t0 = time.time()
    while not cond():
        assert time.time() - t0 < timeout, "condition not met in time"
        time.sleep(0.1)
    return time.time() - t0


def final_text(r: requests.Response) -> str:
    """The text of a /generate answer, streamed (the last event's, cumulative) or not."""
    if not r.headers.get("content-type", "").startswith("text/event-stream"):
        return r.json()["text"]
    events = [ln[5:].strip() for ln in r.text.split("\n\n") if ln.startswith("data:")]
    assert events[-1] == "[DONE]" and '"error"' not in r.text, events[-3:]
    return json.loads(events[-2])["text"]


def reference(unified: str) -> dict[str, str]:
    return {t: gen(unified, t).json()["text"] for t in PROMPTS}


# ---- (b) a failing prefill: retried on the other pair, its decode leg aborted, breaker opens -
def test_failing_prefill_is_retried_and_its_breaker_opens(lbc, unified):
    lb, p0, p1, d0 = (lbc["procs"][k] for k in ("lb", "p0", "p1", "d0"))
    want = reference(unified)
    for i in range(6):  # round robin alternates the prefills: P1 is tried until its breaker opens
        t = PROMPTS[i % len(PROMPTS)]
        r = gen(lb.url, t, stream=i % 2 == 1)
        assert r.status_code == 200, r.text
        assert final_text(r) == want[t]
    retries = metric(lb.url, "sgl_router_retries_total", worker=p1.url)
    assert retries >= 2, "P1's failures were not retried"
    assert worker(lb.url, p1.url)["circuit_breaker"]["state"] in (OPEN, HALF_OPEN)
    assert metric(lb.url, "sgl_router_worker_cb_state", worker=p1.url) in (1, 2)
    # the failed attempts' decode legs were cancelled: nothing left on the decode
    assert_pool_whole(d0.url, timeout=5)
    assert_pool_whole(p0.url, timeout=5)
    for s in (p0, p1, d0):
        assert requests.get(s.url + "/health", timeout=10).status_code == 200


# ---- (a) kill -9 of a prefill: traffic keeps flowing, it leaves rotation, and comes back ----
def test_dead_prefill_leaves_rotation_and_comes_back(lbc, unified):
    procs = lbc["procs"]
    lb, p1 = procs["lb"], procs["p1"]
    want = reference(unified)
    p1.kill()
    t0 = time.time()
    for t in PROMPTS:
        r = gen(lb.url, t)
        assert r.status_code == 200 and r.json()["text"] == want[t], r.text
    # out of rotation within 3 checks 0.5 s apart (plus a check's own time)
    wait(lambda: not worker(lb.url, p1.url)["healthy"], 10)
    assert time.time() - t0 < 10
    assert metric(lb.url, "sgl_router_worker_health", worker=p1.url) == 0
    assert worker(lb.url, p1.url)["last_health_error"]
    before = metric(lb.url, "sgl_router_pd_prefill_requests_total", worker=p1.url)
    for t in PROMPTS:
        assert gen(lb.url, t).status_code == 200
    assert metric(lb.url, "sgl_router_pd_prefill_requests_total", worker=p1.url) == before
    # restarted healthy on the same ports: back in rotation, and served again
    port, bport = lbc["ports"][1]
    procs["p1"] = p1 = launch_prefill(lbc["model"], lbc["dir"], "prefill1-restarted", port,
                                      bport, {**ENV, **SLOW_WRITES})
    wait(lambda: worker(lb.url, p1.url)["available"], 10)
    for i in range(6):
        t = PROMPTS[i % len(PROMPTS)]
        r = gen(lb.url, t)
        assert r.status_code == 200 and r.json()["text"] == want[t], r.text
    served = metric(lb.url, "sgl_router_pd_prefill_requests_total", worker=p1.url) - before
    assert served >= 2, "the restarted prefill got no traffic"
    assert worker(lb.url, p1.url)["circuit_breaker"]["state"] == CLOSED
    assert_pool_whole(p1.url, timeout=5)


# ---- finding 6: one abort, one status, whichever side it reaches --------------------------
@pytest.mark.parametrize("side", ["prefill", "decode"])
def test_an_abort_is_499_on_both_sides(lbc, side):
    """A request whose KV write is in flight (prefill1 delays its writes) is aborted by rid on
    one side; both servers answer 499 (the prefill used to answer 500)."""
    procs = lbc["procs"]
    p1, d0 = procs["p1"], procs["d0"]
    rid = f"abort-{side}"
    body = {"text": "Once upon a time", "sampling_params": GREEDY, "rid": rid,
            "bootstrap_host": "127.0.0.1", "bootstrap_port": lbc["ports"][1][1],
            "bootstrap_room": random.randrange(1, 2**63)}
    with ThreadPoolExecutor(2) as pool:
        legs = [pool.submit(requests.post, u + "/generate", json=body, timeout=60)
                for u in (p1.url, d0.url)]
        wait(lambda: pool_state(p1.url)["disaggregation"]["inflight_queue"] == 1, 10)
        target = p1 if side == "prefill" else d0
        assert requests.post(target.url + "/abort_request", json={"rid": rid},
                             timeout=10).status_code == 200
        answers = [f.result() for f in legs]
    assert [r.status_code for r in answers] == [499, 499], [r.text for r in answers]
    for r in answers:
        assert "Aborted by AbortReq" in r.json()["error"]["message"]
    assert_pool_whole(p1.url, timeout=5)
    assert_pool_whole(d0.url, timeout=10)


# ---- (c) the decode dies mid-stream: an SSE error event, and the prefill is left with nothing -
def test_decode_dying_mid_stream_ends_with_an_error_event(lbc):
    procs = lbc["procs"]
    lb, d0 = procs["lb"], procs["d0"]
    body = {"text": "Once upon a time", "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 400, "ignore_eos": True}}
    events = []
    with requests.post(lb.url + "/generate", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for line in lines:
            if line.startswith(b"data:"):
                events.append(line[5:].strip())
                break
        d0.kill()
        t0 = time.time()
        events += [ln[5:].strip() for ln in lines if ln.startswith(b"data:")]
        ended = time.time() - t0
    assert ended < 10, f"the stream took {ended:.1f}s to end after the decode died"
    errors = [json.loads(e) for e in events if e != b"[DONE]" and b'"error"' in e]
    assert errors and d0.url in errors[-1]["error"]["message"], events[-3:]
    assert errors[-1]["error"]["code"] == 502
    for p in ("p0", "p1"):
        assert_pool_whole(procs[p].url, timeout=5)


# ---- (d) no healthy decode: 503 naming the side ---------------------------------------------
def test_no_healthy_decode_is_503_naming_the_side(lbc):
    lb, d0 = lbc["procs"]["lb"], lbc["procs"]["d0"]
    wait(lambda: not worker(lb.url, d0.url)["available"], 10)
    t0 = time.time()
    r = gen(lb.url, "Once upon a time")
    assert r.status_code == 503 and time.time() - t0 < 2
    msg = r.json()["error"]["message"]
    assert "no healthy decode server" in msg and d0.url in msg
    r = gen(lb.url, "Once upon a time", stream=True)
    assert r.status_code == 503 and "decode" in r.json()["error"]["message"]
