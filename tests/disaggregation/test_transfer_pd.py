"""Real KV transfer between a prefill process and a decode process, on Mooncake and NIXL:
destination pages must equal source pages byte for byte, the metadata row must arrive, pages
the decode did not hand out must stay zero; aborts and timeouts fail both sides; a decode with
another page size is refused at the handshake; a dead decode fails the prefill's sender.

The process pairs are shared by the tests of this module (every test uses fresh rooms); tests
that need a differently configured or doomed decode start one more process against them."""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from transfer_procs import LAYOUT, Proc, new_proc, pd_pair

from sglang.srt.disaggregation.base.conn import KVPoll

BACKENDS = ["mooncake", "nixl"]
NUM_PAGES = 64
DONE = [int(KVPoll.Success), int(KVPoll.Failed)]
READY = [int(KVPoll.WaitingForInput), int(KVPoll.Failed)]
Pair = tuple[Proc, Proc, str]


@pytest.fixture(scope="module")
def pairs() -> Iterator[Callable[..., Pair]]:
    stack = contextlib.ExitStack()
    cache: dict[tuple[str, str], Pair] = {}

    def get(backend: str, dtype: str = "bfloat16") -> Pair:
        if (backend, dtype) not in cache:
            cache[backend, dtype] = stack.enter_context(
                pd_pair(backend, dtype=dtype, num_pages=NUM_PAGES, page_size=4)
            )
        return cache[backend, dtype]

    with stack:
        yield get


def _room() -> int:
    return random.getrandbits(63) | 1


def _regions(raw: bytes) -> np.ndarray:
    """Pool bytes as [K|V, layer, page, bytes of one page]."""
    return np.frombuffer(raw, dtype=np.uint8).reshape(2, LAYOUT["num_layers"], NUM_PAGES, -1)


def _connect(p: Proc, d: Proc, addr: str, room: int, dst: list[int], dst_aux: int) -> None:
    """Both sides open the room; the decode sends its pages; both reach WaitingForInput."""
    d.call("open", room, addr)
    p.call("open", room, addr)
    assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
    d.call("send_metadata", room, dst, dst_aux)
    assert p.call("wait", room, READY)[0] == KVPoll.WaitingForInput


# Two requests at once, with page runs and gaps on both sides (run boundaries differ on the
# two sides, so grouping must split where either side breaks).
ROOMS: list[dict[str, Any]] = [
    {
        "src": [1, 2, 3, 7, 8, 9, 10, 20, 21, 50, 51],
        "dst": [3, 4, 5, 6, 10, 12, 13, 14, 30, 31, 40],
        "chunks": [4, 4, 3],
        "src_aux": 2,
        "dst_aux": 5,
    },
    {
        "src": [30, 31, 32, 33, 34, 40, 42],
        "dst": [50, 51, 52, 20, 21, 22, 60],
        "chunks": [3, 2, 2],
        "src_aux": 0,
        "dst_aux": 1,
    },
]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_pages_and_aux_arrive_byte_for_byte(pairs: Callable[..., Pair], backend: str,
                                            dtype: str) -> None:
    p, d, addr = pairs(backend, dtype)
    p.call("fill_random", 1234)
    d.call("zero")
    rooms = [_room() for _ in ROOMS]
    for room, spec in zip(rooms, ROOMS):
        _connect(p, d, addr, room, spec["dst"], spec["dst_aux"])
        p.call("init", room, len(spec["src"]), spec["src_aux"])
        top = [(-0.25, room % 1000), (-2.5, 7), (-3.0, 11)]
        p.call("set_aux", spec["src_aux"], room, 4242 + len(spec["src"]), 3, -0.25, top)
    for i in range(3):  # interleave the two requests' chunks
        for room, spec in zip(rooms, ROOMS):
            start = sum(spec["chunks"][:i])
            p.call("send", room, spec["src"][start : start + spec["chunks"][i]], i == 2)
    for room in rooms:
        assert p.call("wait", room, DONE) == (KVPoll.Success, "")
        assert d.call("wait", room, DONE) == (KVPoll.Success, "")

    src = _regions(p.call("pool_bytes"))
    dst = _regions(d.call("pool_bytes"))
    touched = set()
    for room, spec in zip(rooms, ROOMS):
        for s, t in zip(spec["src"], spec["dst"]):
            assert (dst[:, :, t] == src[:, :, s]).all(), f"room {room}: page {s} -> {t}"
            touched.add(t)
        aux = d.call("get_aux", spec["dst_aux"])
        assert aux["room"] == room
        assert aux["first_token"] == 4242 + len(spec["src"])
        assert aux["cached_tokens"] == 3
        assert aux["logprob"] == pytest.approx(-0.25)
        assert aux["top_logprobs"] == [(-0.25, room % 1000), (-2.5, 7), (-3.0, 11)]
        m = p.call("metric", room)
        assert m["bytes"] == len(spec["src"]) * src.shape[-1] * 2 * LAYOUT["num_layers"]
        assert m["pages"] == len(spec["src"]) and m["seconds"] > 0 and m["gbps"] > 0
    untouched = [i for i in range(NUM_PAGES) if i not in touched]
    assert not dst[:, :, untouched].any(), "pages outside the destination were written"
    assert d.call("get_aux", 0)["room"] == 0, "a metadata row nobody named was written"


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_last_chunk_and_page_count_mismatch(pairs: Callable[..., Pair],
                                                  backend: str) -> None:
    p, d, addr = pairs(backend)
    ok, bad = _room(), _room()
    for room, aux in ((ok, 6), (bad, 7)):
        _connect(p, d, addr, room, [8, 9, 10], aux)
        p.call("init", room, 3, 3)
    # every page in the first chunk, then an empty last chunk that carries only the aux row
    p.call("set_aux", 3, ok, 5, 0, None, [])
    p.call("send", ok, [0, 1, 2], False)
    p.call("send", ok, [], True)
    assert p.call("wait", ok, DONE) == (KVPoll.Success, "")
    assert d.call("wait", ok, DONE) == (KVPoll.Success, "")
    aux = d.call("get_aux", 6)
    assert (aux["room"], aux["first_token"], aux["logprob"], aux["top_logprobs"]) == (ok, 5,
                                                                                     None, [])
    # a last chunk that leaves a destination page unfilled is refused, on both sides
    p.call("send", bad, [0, 1], True)
    status, reason = p.call("wait", bad, DONE)
    assert status == KVPoll.Failed and "2 pages in all but the decode allocated 3" in reason
    status, reason = d.call("wait", bad, DONE)
    assert status == KVPoll.Failed and "decode allocated 3" in reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_abort_on_either_side_fails_both(pairs: Callable[..., Pair], backend: str) -> None:
    p, d, addr = pairs(backend)
    by_decode, by_prefill, early = _room(), _room(), _room()
    _connect(p, d, addr, by_decode, [1, 2], 2)
    _connect(p, d, addr, by_prefill, [3, 4], 3)

    d.call("abort", by_decode)
    assert d.call("wait", by_decode, DONE) == (KVPoll.Failed,
                                               _err(by_decode, "Aborted by AbortReq."))
    status, reason = p.call("wait", by_decode, DONE)
    assert status == KVPoll.Failed and "Aborted by AbortReq." in reason and "decode" in reason
    p.call("init", by_decode, 2, 0)
    p.call("send", by_decode, [5, 6], True)  # dropped: the room already failed
    assert p.call("poll", by_decode) == KVPoll.Failed

    p.call("abort", by_prefill)
    assert p.call("wait", by_prefill, DONE) == (KVPoll.Failed,
                                                _err(by_prefill, "Aborted by AbortReq."))
    status, reason = d.call("wait", by_prefill, DONE)
    assert status == KVPoll.Failed and "Aborted by AbortReq." in reason

    # the decode aborts before the prefill has even seen the request
    d.call("open", early, addr)
    assert d.call("wait", early, READY)[0] == KVPoll.WaitingForInput
    d.call("send_metadata", early, [7], 4)
    d.call("abort", early)
    assert d.call("wait", early, DONE)[0] == KVPoll.Failed
    p.call("open", early, addr)  # before or after the ABORT landed: Failed either way
    status, reason = p.call("wait", early, DONE)
    assert status == KVPoll.Failed and "Aborted by AbortReq." in reason

    # the prefill aborts (and forgets) a request before the decode sent its pages: the decode
    # hears of it as soon as it sends them, not after its waiting timeout
    late = _room()
    p.call("open", late, addr)
    p.call("abort", late)
    p.call("clear", late)
    d.call("open", late, addr)
    assert d.call("wait", late, READY)[0] == KVPoll.WaitingForInput
    d.call("send_metadata", late, [8], 5)
    status, reason = d.call("wait", late, DONE, timeout=5)
    assert status == KVPoll.Failed and "Aborted by AbortReq." in reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_bootstrap_and_waiting_timeouts(pairs: Callable[..., Pair], backend: str) -> None:
    p, d, addr = pairs(backend)
    p.call("set_env", {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "1"})
    d.call("set_env", {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "1"})
    try:
        # prefill: the decode never sends pages for this room
        orphan = _room()
        p.call("open", orphan, addr)
        status, reason = p.call("wait", orphan, DONE)
        assert status == KVPoll.Failed
        assert f"Request {orphan} timed out after" in reason and "KVPoll.Bootstrapping" in reason
        # decode: the prefill never sends the KV; the decode gives up and tells the prefill
        stuck = _room()
        _connect(p, d, addr, stuck, [1, 2, 3], 0)
        status, reason = d.call("wait", stuck, DONE)
        assert status == KVPoll.Failed and "KVPoll.WaitingForInput" in reason
        status, reason = p.call("wait", stuck, DONE)
        # a decode's timeout is a failure on the prefill too (500 there), not a client abort
        assert status == KVPoll.Failed and "Aborted by AbortReq." not in reason
        assert "failed the request" in reason and "KVPoll.WaitingForInput" in reason
    finally:
        p.call("set_env", {"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": None})
        d.call("set_env", {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT": None})


@pytest.mark.parametrize("backend", BACKENDS)
def test_page_size_mismatch_is_refused_at_handshake(pairs: Callable[..., Pair],
                                                    backend: str) -> None:
    p, _, addr = pairs(backend)
    d = new_proc(backend, "decode", _port(addr), page_size=1, num_pages=NUM_PAGES)
    try:
        room = _room()
        d.call("open", room, addr)
        status, reason = d.call("wait", room, DONE)
        assert status == KVPoll.Failed
        assert "page size differs: prefill 4, decode 1; start both with the same --page-size" \
            in reason
        # the prefill never hears from this decode: its sender stays Bootstrapping
        p.call("open", room, addr)
        assert p.call("poll", room) == KVPoll.Bootstrapping
        p.call("abort", room)
    finally:
        d.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_decode_fails_the_prefill_sender(pairs: Callable[..., Pair], backend: str) -> None:
    p, _, addr = pairs(backend)
    d = new_proc(backend, "decode", _port(addr), num_pages=NUM_PAGES)
    try:
        room, later = _room(), _room()
        for r in (room, later):
            _connect(p, d, addr, r, [4, 5, 6], 1)
            p.call("init", r, 3, 0)
        d.kill()
        p.call("send", room, [0, 1], False)
        p.call("send", room, [2], True)
        status, reason = p.call("wait", room, DONE, timeout=20)
        assert status == KVPoll.Failed
        assert f"Failed to send kv chunk of {room} to" in reason
        # later requests for the same dead decode fail at once
        p.call("send", later, [0, 1, 2], True)
        status, reason = p.call("wait", later, DONE, timeout=20)
        assert status == KVPoll.Failed and "could be dead" in reason
    finally:
        d.close()


def _port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _err(room: int, reason: str) -> str:
    return f"KVTransferError(bootstrap_room={room}): {reason}"
