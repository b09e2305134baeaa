"""A PD server that loses one TP rank (SIGKILL of its rank-1 scheduler process) while a request
is in flight through mini_lb: the request ends at once with mini_lb's 503 carrying the server's
"the scheduler process of TP rank 1 exited (code -9)", the server's rank 0 exits and its HTTP
process keeps answering 503 with that message (README, "Tensor, data parallelism"), and the
other side frees the request's KV pages on every rank and keeps serving.

Three servers (Mooncake, TCP): a tp2 prefill, a tp2 decode and a tp1 decode, with one mini_lb
in front of (prefill, tp2 decode) and one in front of (prefill, tp1 decode). The tests run in
file order: the tp2 decode's rank 1 dies first (the prefill survives and is checked), then the
prefill's rank 1 (the tp1 decode survives and is checked). Each request is held with its KV
write in flight (SGLANG_TEST_DISAGG_TRANSFER_DELAY on the prefill) when the rank dies.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
import requests
from pool_checks import assert_pool_whole
from rank_checks import rank_gone

from sglang.test import fault_matrix as fm
from sglang.test.pd_calls import Call, pd_state, wait_for
from sglang.test.server_utils import free_port, launch_server, spawn, wait_all

# the reference server's (tests/conftest.py REFERENCE_ARGS): same greedy answers
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024", "--disaggregation-transfer-backend", "mooncake"]
# heartbeats and timeouts of a few seconds (SGLang's names); a server whose rank died keeps
# answering 503 while the test looks (it exits after this delay: test_tp_server checks that)
ENV = {**fm.ENV, "SGLANG_DEAD_SCHEDULER_EXIT_DELAY": "120"}
PREFILL_ENV = {**ENV, "SGLANG_TEST_DISAGG_TRANSFER_DELAY": "1.5"}  # each KV write in flight
PROMPT = "Once upon a time, in a quiet village by the sea, there lived"
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
DEAD = "the scheduler process of TP rank 1 exited (code -9)"  # the HTTP process's 503
# the error reaches the client before any configured timeout (8 s) could fire: measured 0.1 to
# 0.6 s on 2 busy cores (the HTTP process polls its ranks every 0.5 s)
LIMIT = fm.TIMEOUT


@pytest.fixture(scope="module")
def servers(tiny_model, log_dir):
    """{"prefill", "decode2", "decode1": Proc, "lb2": (prefill, decode2) mini_lb,
    "lb1": (prefill, decode1) mini_lb}"""
    where = f"{log_dir}/pd-tp-kill"
    bport = free_port()
    procs = {
        "prefill": launch_server(tiny_model, where, "prefill-tp2", [
            *ARGS, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port",
            str(bport), "--tp-size", "2"], PREFILL_ENV, wait=False),
        "decode2": launch_server(tiny_model, where, "decode-tp2", [
            *ARGS, "--disaggregation-mode", "decode", "--tp-size", "2"], ENV, wait=False),
        "decode1": launch_server(tiny_model, where, "decode-tp1", [
            *ARGS, "--disaggregation-mode", "decode"], ENV, wait=False),
    }
    for tp in (2, 1):
        port = free_port()
        argv = ["-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1", "--port",
                str(port), "--prefill", procs["prefill"].url, "--decode",
                procs[f"decode{tp}"].url, "--prefill-bootstrap-ports", str(bport)]
        procs[f"lb{tp}"] = spawn(f"mini_lb-d{tp}", argv, f"http://127.0.0.1:{port}", where)
    try:
        wait_all(list(procs.values()))
        yield procs
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.stop()


def _rank_pids(proc) -> dict[int, int]:
    """TP rank -> pid of its scheduler process, from the server's start-up log."""
    pids = dict(re.findall(r"TP rank (\d) of 2 joined .*pid (\d+)", proc.log_tail(400)))
    assert set(pids) == {"0", "1"}, proc.log_tail(40)
    return {int(r): int(p) for r, p in pids.items()}


def _generate(url: str) -> dict:
    r = requests.post(url + "/generate", timeout=120,
                      json={"text": PROMPT, "sampling_params": GREEDY})
    assert r.status_code == 200, r.text
    return r.json()


def _kill_rank1_in_flight(lb: str, prefill: str, victim, side: str) -> dict[int, int]:
    """One request through ``lb`` held with its KV write in flight, then ``victim``'s rank-1
    scheduler SIGKILLed: the client gets 503 naming the rank, at once; returns the rank pids."""
    pids = _rank_pids(victim)
    call = Call(lb, {"text": PROMPT, "sampling_params": GREEDY})
    wait_for("a KV write in flight", lambda: pd_state(prefill)["disaggregation"]["inflight_queue"])
    os.kill(pids[1], signal.SIGKILL)
    t_kill = time.time()
    out = call.result(timeout=LIMIT * 2)
    print(f"{side} rank 1 killed: client saw {out.brief()} after {out.at - t_kill:.1f}s")
    assert out.status == 503, out.brief()
    assert DEAD in out.message, out.brief()
    assert out.at - t_kill < LIMIT, out.brief()
    return pids


def _assert_dead_server(proc, pids: dict[int, int]) -> None:
    """Rank 0 exited too, and the HTTP process answers 503 naming the exited scheduler."""
    assert rank_gone(pids[0], timeout=LIMIT), "rank 0 still runs"
    assert proc.alive()  # the HTTP process stays, answering 503
    r = requests.post(proc.url + "/generate", timeout=10, json={  # as mini_lb sends it
        "text": "hi", "sampling_params": {"max_new_tokens": 2}, "bootstrap_host": "127.0.0.1",
        "bootstrap_port": 1, "bootstrap_room": 1})
    assert r.status_code == 503, r.text
    assert DEAD in r.text, r.text
    assert requests.get(proc.url + "/health", timeout=10).status_code == 503


def test_decode_rank_killed_in_flight(servers, unified):
    prefill, decode = servers["prefill"], servers["decode2"]
    want = _generate(unified)["output_ids"]
    assert _generate(servers["lb2"].url)["output_ids"] == want
    pids = _kill_rank1_in_flight(servers["lb2"].url, prefill.url, decode, "decode")
    _assert_dead_server(decode, pids)
    # the prefill freed the room on both ranks and serves another decode
    assert_pool_whole(prefill.url)
    assert _generate(servers["lb1"].url)["output_ids"] == want
    assert_pool_whole(prefill.url)


def test_prefill_rank_killed_in_flight(servers, unified):
    prefill, decode = servers["prefill"], servers["decode1"]
    pids = _kill_rank1_in_flight(servers["lb1"].url, prefill.url, prefill, "prefill")
    _assert_dead_server(prefill, pids)
    assert requests.get(decode.url + "/health", timeout=10).status_code == 200
    assert_pool_whole(decode.url)
