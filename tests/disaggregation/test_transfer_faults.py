"""Transfer faults between a real prefill process and a real decode process, on Mooncake and
NIXL: a decode that stalls through a write timeout is probed and taken back (issue 11, finding
2); a room already in flight is refused as a duplicate without touching the first request
(finding 4); a bootstrap port with nothing behind it fails fast, and the injected request
failure rate is per request (finding 7); injected write failures fail both sides cleanly."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from transfer_procs import pd_pair

from sglang.srt.disaggregation.base.conn import KVPoll
from sglang.srt.disaggregation.common import faults
from sglang.srt.disaggregation.common.utils import free_port

BACKENDS = ["mooncake", "nixl"]
DONE = [int(KVPoll.Success), int(KVPoll.Failed)]
READY = [int(KVPoll.WaitingForInput), int(KVPoll.Failed)]
# a write to a stalled decode gives up after 2 s (NIXL: ours; Mooncake TCP: its own knob)
ENV = {"SGLANG_DISAGGREGATION_TRANSFER_TIMEOUT": "2", "MC_TRANSFER_TIMEOUT": "2",
       "UCX_TLS": "tcp,self",  # NIXL over shared memory would not need the decode to run
       "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.5"}


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request):
    with pd_pair(request.param, num_pages=32, page_size=4, env=ENV) as p:
        yield p


def _room() -> int:
    return random.getrandbits(63) | 1


def _connect(p, d, addr, room: int, src: list[int], dst: list[int], aux: int = 1) -> None:
    d.call("open", room, addr)
    p.call("open", room, addr)
    assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
    d.call("send_metadata", room, dst, aux)
    assert p.call("wait", room, READY)[0] == KVPoll.WaitingForInput
    p.call("init", room, len(src), aux)


def _transfer(p, d, addr, room: int, src: list[int], dst: list[int], aux: int = 1) -> None:
    _connect(p, d, addr, room, src, dst, aux)
    p.call("send", room, src, True)


def _finish(p, d, room: int) -> tuple[tuple[int, str], tuple[int, str]]:
    out = p.call("wait", room, DONE), d.call("wait", room, DONE)
    for side in (p, d):
        side.call("clear", room)
    return out


def test_stalled_decode_is_taken_back_after_a_write_timeout(pair) -> None:
    p, d, addr = pair
    ok = _room()
    _transfer(p, d, addr, ok, [0, 1], [2, 3])
    assert _finish(p, d, ok)[0] == (KVPoll.Success, "")
    stalled = _room()
    _connect(p, d, addr, stalled, list(range(8)), list(range(8, 16)), aux=2)
    os.kill(d.proc.pid, signal.SIGSTOP)  # the decode stalls (GC pause, swap, SIGSTOP)
    try:
        p.call("send", stalled, list(range(8)), True)
        status, reason = p.call("wait", stalled, DONE, timeout=30)
        failed_while_stopped = p.call("failed_peers")
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert status == KVPoll.Failed and f"Failed to send kv chunk of {stalled}" in reason
    assert failed_while_stopped == [d.call("endpoint")]
    deadline = time.monotonic() + 10
    while p.call("failed_peers") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert p.call("failed_peers") == [], "the prefill did not take the resumed decode back"
    _finish(p, d, stalled)
    for _ in range(3):  # new requests succeed, without the decode registering again
        room = _room()
        _transfer(p, d, addr, room, [10, 11], [12, 13])
        assert _finish(p, d, room) == ((KVPoll.Success, ""), (KVPoll.Success, ""))


def test_room_in_flight_is_refused_as_a_duplicate(pair) -> None:
    p, d, addr = pair
    room = _room()
    _connect(p, d, addr, room, [0, 1, 2], [3, 4, 5], aux=3)
    for side, where in ((p, "prefill"), (d, "decode")):
        status, reason = side.call("open_extra", room, addr)
        assert status == KVPoll.Failed
        assert f"bootstrap_room {room} is already in flight on this {where} server" in reason
    p.call("send", room, [0, 1, 2], True)  # the first request is untouched and completes
    assert _finish(p, d, room) == ((KVPoll.Success, ""), (KVPoll.Success, ""))
    again = _room()  # a finished room may be used again
    _transfer(p, d, addr, again, [6], [7])
    assert _finish(p, d, again)[1] == (KVPoll.Success, "")


def test_refused_bootstrap_port_fails_fast(pair) -> None:
    _, d, _ = pair
    room, nowhere = _room(), f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    d.call("open", room, nowhere)
    status, reason = d.call("wait", room, DONE, timeout=30)
    took = time.monotonic() - t0
    assert status == KVPoll.Failed and "connection refused" in reason and nowhere in reason
    assert took < 4, f"a refused bootstrap port took {took:.1f}s to fail (was 14 s)"
    d.call("clear", room)


def test_injected_request_failures_are_drawn_once_per_request(pair) -> None:
    _, d, addr = pair
    d.call("set_env", {"SGLANG_TEST_DISAGG_FAILURE_PROB": "0.05"})
    rooms = [_room() for _ in range(200)]
    try:
        for room in rooms:
            d.call("open", room, addr)
        statuses = d.call("poll_many", rooms, 50)  # 50 polls each: per poll, ~92 % would fail
    finally:
        d.call("set_env", {"SGLANG_TEST_DISAGG_FAILURE_PROB": None})
        for room in rooms:
            d.call("abort", room)
            d.call("clear", room)
    failed = statuses.count(int(KVPoll.Failed))
    assert 0 < failed <= 25, f"{failed} of 200 requests failed at 5 %"  # Binomial(200, .05)


def test_request_failure_rate_over_2000_draws(monkeypatch) -> None:
    monkeypatch.setenv("SGLANG_TEST_DISAGG_FAILURE_PROB", "0.05")
    rng = random.Random(11)
    n = sum(faults.request_fails(rng) for _ in range(2000))
    assert 100 - 5 * 9.75 < n < 100 + 5 * 9.75  # mean 100, sd 9.75: five sigma
    monkeypatch.setenv("SGLANG_TEST_DISAGG_FAILURE_PROB", "0")
    assert not any(faults.request_fails(rng) for _ in range(200))


def test_injected_write_failures_fail_both_sides_and_free_the_pages(pair) -> None:
    p, d, addr = pair
    p.call("set_env", {"SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB": "1.0"})
    try:
        room = _room()
        _transfer(p, d, addr, room, [0, 1], [2, 3])
        status, reason = p.call("wait", room, DONE)
        assert status == KVPoll.Failed and "SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB" in reason
        status, reason = d.call("wait", room, DONE)
        assert status == KVPoll.Failed and "SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB" in reason
        assert d.call("wait_drained", room), "the decode may never reuse the pages"
        _finish(p, d, room)
    finally:
        p.call("set_env", {"SGLANG_TEST_DISAGG_WRITE_FAILURE_PROB": None})
    assert p.call("failed_peers") == []  # an injected failure does not mark the decode dead
    ok = _room()
    _transfer(p, d, addr, ok, [4], [5])
    assert _finish(p, d, ok) == ((KVPoll.Success, ""), (KVPoll.Success, ""))
