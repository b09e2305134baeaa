"""The prefill acknowledges a decode's abort only once its writes into that room's pages are
over, on Mooncake and NIXL; the decode trusts no ack it did not ask for.

Real prefill and decode KV managers in their own processes (transfer_procs). The prefill's
writes are held in flight by the test-only SGLANG_TEST_DISAGG_TRANSFER_DELAY knob.
"""

from __future__ import annotations

import random
import time

import msgpack
import numpy as np
import pytest
import zmq
from transfer_procs import LAYOUT, pd_pair

from sglang.srt.disaggregation.base.conn import KVPoll

NUM_PAGES = 32
DONE = [int(KVPoll.Success), int(KVPoll.Failed)]
READY = [int(KVPoll.WaitingForInput), int(KVPoll.Failed)]


def _room() -> int:
    return random.getrandbits(63) | 1


def _pages(raw: bytes, pages: list[int]) -> np.ndarray:
    a = np.frombuffer(raw, dtype=np.uint8).reshape(2, LAYOUT["num_layers"], NUM_PAGES, -1)
    return a[:, :, pages]


def _wait_write_started(p, room: int) -> None:
    """The prefill's worker took the room's job (its metric starts with the first write)."""
    deadline = time.monotonic() + 60
    while not p.call("metric", room):
        assert time.monotonic() < deadline, "the prefill never started the write"
        time.sleep(0.01)


def _connect(p, d, addr: str, room: int, dst: list[int], aux: int) -> None:
    d.call("open", room, addr)
    p.call("open", room, addr)
    assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
    d.call("send_metadata", room, dst, aux)
    assert p.call("wait", room, READY)[0] == KVPoll.WaitingForInput


@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_abort_ack_comes_after_the_write_in_flight(backend: str) -> None:
    with pd_pair(backend, num_pages=NUM_PAGES, page_size=4) as (p, d, addr):
        p.call("fill_random", 7)
        src, dst = [1, 2, 3], [10, 11, 12]
        room = _room()
        _connect(p, d, addr, room, dst, 1)
        p.call("set_env", {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": "2"})
        p.call("init", room, 3, 0)
        p.call("send", room, src, True)
        _wait_write_started(p, room)  # the worker now sits in this write for 2 s
        d.call("abort", room)
        assert d.call("wait", room, DONE)[0] == KVPoll.Failed
        assert not d.call("drained", room)  # the write has not landed: no ack yet
        assert d.call("wait_drained", room, timeout=60)
        # the ack came after the write: the decode's pages hold the prefill's bytes now
        got = _pages(d.call("pool_bytes"), dst)
        assert np.array_equal(got, _pages(p.call("pool_bytes"), src))
        assert p.call("poll", room) == KVPoll.Failed
        p.call("set_env", {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": None})

        # an abort the prefill hears before any write: acked at once, nothing written
        early = _room()
        _connect(p, d, addr, early, [20], 2)
        d.call("abort", early)
        assert d.call("wait_drained", early, timeout=60)
        p.call("init", early, 1, 0)
        p.call("send", early, [5], True)  # dropped: the room failed
        time.sleep(0.5)
        assert not _pages(d.call("pool_bytes"), [20]).any()

        # the prefill never got the pages (no sender, its destination forgotten): ack anyway
        lone = _room()
        d.call("open", lone, addr)
        assert d.call("wait", lone, READY)[0] == KVPoll.WaitingForInput
        d.call("send_metadata", lone, [21], 3)
        d.call("abort", lone)
        assert d.call("wait_drained", lone, timeout=60)
        for r in (room, early, lone):
            p.call("clear", r) if r != lone else None
            d.call("clear", r)


def test_forged_duplicate_and_unknown_acks_are_ignored() -> None:
    with pd_pair("mooncake", num_pages=NUM_PAGES, page_size=4) as (p, d, addr):
        room = _room()
        _connect(p, d, addr, room, [4], 1)
        p.call("set_env", {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": "3"})
        p.call("init", room, 1, 0)
        p.call("send", room, [2], True)
        _wait_write_started(p, room)
        d.call("abort", room)
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(f"tcp://{d.call('endpoint')}")
        prefill = p.call("endpoint")
        bad = [
            {"t": "abort_ack", "peer": "127.0.0.1:1", "room": room},  # not this room's prefill
            {"t": "abort_ack", "peer": prefill, "room": _room()},  # unknown room
            {"t": "abort_ack", "peer": prefill, "room": str(room)},  # wrong type
            {"t": "abort_ack", "peer": prefill, "room": 1.5},  # not an int
            {"t": "abort_ack", "peer": prefill},  # missing field
            {"t": "abort_ack", "peer": prefill, "room": room, "extra": 1},  # unknown field
            {"t": "nonsense"},
            [1, 2, 3],
        ]
        for msg in bad:
            sock.send(msgpack.packb(msg, use_bin_type=True))
        sock.send(b"\xc1 not msgpack")
        time.sleep(0.5)
        assert d.call("control_alive")
        assert not d.call("drained", room)  # none of them counted as the prefill's word
        assert d.call("wait_drained", room, timeout=60)  # the real one does
        # a duplicate (forged or replayed) after the real ack, and after the room is gone
        for _ in range(2):
            sock.send(msgpack.packb({"t": "abort_ack", "peer": prefill, "room": room}))
        time.sleep(0.3)
        assert d.call("drained", room)
        d.call("clear", room)
        sock.send(msgpack.packb({"t": "abort_ack", "peer": prefill, "room": room}))
        time.sleep(0.3)
        assert d.call("control_alive")
        sock.close()
        ctx.term()
        # the pair still works
        p.call("set_env", {"SGLANG_TEST_DISAGG_TRANSFER_DELAY": None})
        ok = _room()
        _connect(p, d, addr, ok, [6], 2)
        p.call("init", ok, 1, 0)
        p.call("send", ok, [3], True)
        assert d.call("wait", ok, DONE)[0] == KVPoll.Success
