"""Bad input on a live PD cluster's internal ports (issue 11): the prefill's bootstrap HTTP port
and its ZMQ control socket. A foreign PUT /route is refused and the cluster keeps serving
(finding 3); a bootstrap_room sent twice at once straight to a prefill and a decode is refused
as a duplicate while the first request succeeds (finding 4); hypothesis-generated garbage on
both ports (random bytes, truncated msgpack, wrong types, made-up peers, oversized frames)
crashes nothing, and afterwards a real request succeeds and every pool is whole.

Uses the session's 1P1D Mooncake cluster (``pd_clusters``), shared with other modules."""

from __future__ import annotations

import concurrent.futures as cf
import http.client
import json
import random
import time

import msgpack
import pytest
import requests
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as stg

from pool_checks import assert_pool_whole
from sglang.srt.disaggregation.common import messages

GREEDY = {"temperature": 0, "max_new_tokens": 8}
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def cluster(pd_clusters):
    c = pd_clusters("mooncake")
    p, port = c.prefills[0], c.bootstrap_ports[0]
    route = requests.get(f"http://127.0.0.1:{port}/route", timeout=10).json()
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100000)
    sock.connect(f"tcp://{route['rank_ip']}:{route['rank_port']}")
    yield c, port, sock
    sock.close()


def _served(c) -> str:
    r = requests.post(c.url + "/generate", json={"text": PROMPT, "sampling_params": GREEDY},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def _healthy_and_whole(c) -> None:
    for p in c.prefills + c.decodes:
        assert p.alive(), p.log_tail()
        assert requests.get(p.url + "/health", timeout=20).status_code == 200
        assert_pool_whole(p.url)


def _http(port: int, method: str, path: str, body: bytes = b"",
          headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def test_foreign_registration_is_refused_and_the_cluster_serves(cluster) -> None:
    c, port, _ = cluster
    before = _served(c)
    bogus = {"rank_ip": "10.6.6.6", "rank_port": 6666, "page_size": 1, "kv_dtype": "x",
             "model_shape": {}, "engine_rank": 0}
    assert _http(port, "PUT", "/route", json.dumps(bogus).encode())[0] == 401
    assert _http(port, "PUT", "/route", json.dumps(bogus).encode(),
                 {"X-Bootstrap-Secret": "guess"})[0] == 403
    code, text = _http(port, "GET", "/route?engine_rank=abc")
    assert code == 400 and "engine_rank must be an integer" in text
    assert _http(port, "PUT", "/route", b"{oops", {"X-Bootstrap-Secret": "guess"})[0] == 403
    assert _served(c) == before
    _healthy_and_whole(c)


def test_room_sent_twice_at_once_is_refused_as_a_duplicate(cluster) -> None:
    c, port, _ = cluster
    params = {"temperature": 0, "max_new_tokens": 32}
    expected = requests.post(c.url + "/generate", json={"text": PROMPT, "sampling_params": params},
                             timeout=60).json()["text"]
    room = random.randrange(1, 2**63)
    body = {"text": PROMPT, "sampling_params": params, "bootstrap_host": "127.0.0.1",
            "bootstrap_port": port, "bootstrap_room": room}

    def post(url: str) -> requests.Response:
        return requests.post(url + "/generate", json=body, timeout=60)

    # Both requests reach both halves, as mini_lb sends them; the prefill halves first (one of
    # mini_lb's interleavings), so that both are in flight there whatever the machine's speed.
    with cf.ThreadPoolExecutor(4) as pool:
        prefill = [pool.submit(post, c.prefills[0].url) for _ in range(2)]
        time.sleep(0.5)
        decode = [pool.submit(post, c.decodes[0].url) for _ in range(2)]
        halves = [[f.result() for f in prefill], [f.result() for f in decode]]
    for half in halves:
        ok = [r for r in half if r.status_code == 200]
        refused = [r for r in half if r.status_code != 200]
        assert len(ok) == 1 and len(refused) == 1, [r.text[:300] for r in half]
        assert f"bootstrap_room {room} is already in flight" in refused[0].text
    assert [r.json()["text"] for r in halves[1] if r.status_code == 200] == [expected]
    _healthy_and_whole(c)


def _frames() -> stg.SearchStrategy[bytes]:
    scalar = stg.one_of(stg.none(), stg.booleans(), stg.integers(-2**63, 2**64 - 1),
                        stg.text(max_size=20), stg.binary(max_size=20), stg.floats())
    peer = stg.one_of(stg.just("127.0.0.1:1"), stg.text(max_size=30),
                      stg.integers(1, 65535).map(lambda p: f"127.0.0.1:{p}"))
    msg = stg.fixed_dictionaries(
        {"t": stg.sampled_from(["register", "metadata", "abort", "pong", "status", "x", 3]),
         "peer": peer},
        optional={"room": stg.one_of(stg.integers(-2**63, 2**64 - 1), scalar),
                  "dst_pages": stg.one_of(stg.binary(max_size=64), scalar),
                  "dst_aux_index": stg.one_of(stg.integers(-5, 10**6), scalar),
                  "engine_rank": scalar, "kv_ptrs": stg.lists(scalar, max_size=4),
                  "kv_item_len": scalar, "aux_ptrs": stg.lists(scalar, max_size=3),
                  "aux_item_lens": stg.lists(scalar, max_size=3), "transfer": scalar})
    packed = msg.map(lambda d: msgpack.packb(d, use_bin_type=True))
    # well-formed messages from decodes the prefill never saw, for rooms that may be in flight
    room, u32 = stg.integers(0, 2**64 - 1), stg.integers(0, 2**32)
    valid = stg.one_of(
        stg.builds(messages.MetadataMsg, peer, room, stg.binary(max_size=64), u32),
        stg.builds(messages.AbortMsg, peer, room),
        stg.builds(messages.PongMsg, peer),
        stg.builds(messages.RegisterMsg, peer, u32, stg.lists(u32, max_size=4), u32,
                   stg.lists(u32, max_size=3), stg.lists(u32, max_size=3)),
    ).filter(lambda m: messages.valid_endpoint(m.peer)).map(messages.encode)
    return stg.one_of(stg.binary(max_size=200), packed, valid,
                      packed.flatmap(lambda b: stg.integers(0, len(b)).map(lambda n: b[:n])))


def _http_garbage() -> stg.SearchStrategy[tuple[str, str, bytes, dict]]:
    return stg.tuples(
        stg.sampled_from(["GET", "PUT", "POST", "DELETE"]),
        stg.sampled_from(["/route", "/health", "/route?engine_rank=-1", "/route?engine_rank=",
                          "/x"]),
        stg.one_of(stg.binary(max_size=300), stg.just(b"[]"), stg.just(b'{"rank_ip": 1}')),
        stg.fixed_dictionaries({}, optional={"X-Bootstrap-Secret": stg.text(
            stg.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)}),
    )


def test_garbage_on_the_control_socket_and_bootstrap_port(cluster) -> None:
    c, port, sock = cluster
    before = _served(c)
    t0 = time.monotonic()
    codes: list[int] = []

    @settings(max_examples=80, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frames=stg.lists(_frames(), min_size=1, max_size=5), req=_http_garbage())
    def fuzz(frames: list[bytes], req: tuple[str, str, bytes, dict]) -> None:
        for f in frames:
            sock.send(f)
        code, _ = _http(port, *req)
        codes.append(code)
        assert code in (400, 401, 403, 404, 405, 411, 413) or (code, req[1]) in (
            (200, "/health"), (200, "/route"), (503, "/route")), (req, code)

    fuzz()
    sock.send(b"\x92" + b"\xff" * (20 << 20))  # an oversized frame: the socket drops the peer
    assert time.monotonic() - t0 < 20
    assert any(400 <= c < 500 for c in codes)
    assert _served(c) == before
    _healthy_and_whole(c)
