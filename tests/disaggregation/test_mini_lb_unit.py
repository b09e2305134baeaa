"""mini_lb: pure-logic tests, then the real process routing between two tiny aiohttp stubs.

The stubs only check routing and failure handling; engine end-to-end tests live elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from sglang.srt.disaggregation.lb.args import parse_args, resolve_bootstrap_ports
from sglang.srt.disaggregation.lb.bodies import (
    ensure_rids,
    error_message,
    inject_bootstrap,
    iter_json_events,
    merge_input_logprobs,
    merge_sse_event,
    split_events,
    stream_failure,
)
from sglang.srt.disaggregation.lb.pool import Prefill, ServerPool, bootstrap_host, pair_index

REPO = Path(__file__).resolve().parents[2]
P = Prefill("http://10.1.2.3:30000", 8998)


# ---- pure logic -----------------------------------------------------------------------------
def test_inject_single_and_openai() -> None:
    for endpoint, body in [
        ("generate", {"text": "hi"}),
        ("generate", {"input_ids": [1, 2, 3]}),
        ("v1/completions", {"prompt": "hi"}),
        ("v1/completions", {"prompt": [1, 2, 3]}),
        ("v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ]:
        out = inject_bootstrap(body, P, endpoint)
        assert out["bootstrap_host"] == "10.1.2.3" and out["bootstrap_port"] == 8998
        assert isinstance(out["bootstrap_room"], int) and 0 <= out["bootstrap_room"] < 2**63
        assert "bootstrap_room" not in body  # the client's dict is not modified


def test_inject_batch_gives_a_room_per_item() -> None:
    for endpoint, body in [
        ("generate", {"text": ["a", "b", "c"]}),
        ("generate", {"input_ids": [[1], [2], [3]]}),
        ("v1/completions", {"prompt": ["a", "b", "c"]}),
    ]:
        out = inject_bootstrap(body, P, endpoint)
        assert out["bootstrap_host"] == ["10.1.2.3"] * 3 and out["bootstrap_port"] == [8998] * 3
        assert len(set(out["bootstrap_room"])) == 3


def test_rooms_are_unique_and_63_bit() -> None:
    rng = random.Random(0)
    rooms = {inject_bootstrap({"text": "x"}, P, "generate", rng)["bootstrap_room"]
             for _ in range(5000)}  # fmt: skip
    assert len(rooms) == 5000 and max(rooms) < 2**63 and max(rooms) > 2**62


def test_bootstrap_host_ipv6_and_names() -> None:
    assert bootstrap_host("http://[::1]:30000") == "[::1]"
    assert bootstrap_host("http://[fe80::2]:1") == "[fe80::2]"
    assert bootstrap_host("http://node-7.cluster:30000") == "node-7.cluster"


def test_rids_injected() -> None:
    body: dict[str, Any] = {"text": ["a", "b"]}
    rids = ensure_rids(body, "generate")
    assert body["rid"] == rids and len(set(rids)) == 2
    body = {"text": "a"}
    (rid,) = ensure_rids(body, "generate")
    assert body["rid"] == rid
    body = {"text": "a", "rid": "mine"}
    assert ensure_rids(body, "generate") == ["mine"] and body["rid"] == "mine"


def test_port_broadcast_and_counts() -> None:
    assert resolve_bootstrap_ports(3, None) == [8998] * 3
    assert resolve_bootstrap_ports(3, [9000]) == [9000] * 3
    assert resolve_bootstrap_ports(2, [1, None]) == [1, None]
    with pytest.raises(ValueError, match="one per"):
        resolve_bootstrap_ports(2, [1, 2, 3])
    a = parse_args("--prefill http://a:1 http://b:2 --decode http://c:3 "
                   "--prefill-bootstrap-ports 7000".split())  # fmt: skip
    assert a.prefill_bootstrap_ports == [7000, 7000] and a.decode_urls == ["http://c:3"]
    a = parse_args("--prefill http://a:1 9001 --prefill b:2 --decode c:3".split())
    assert a.prefill_urls == ["http://a:1", "http://b:2"]
    assert a.prefill_bootstrap_ports == [9001, 8998]


@pytest.mark.parametrize("n_p,n_d", [(1, 1), (2, 2), (2, 3), (3, 2), (4, 6), (1, 4), (5, 1)])
def test_round_robin_covers_all_pairs(n_p: int, n_d: int) -> None:
    picks = [pair_index(k, n_p, n_d) for k in range(n_p * n_d)]
    assert set(picks) == {(p, d) for p in range(n_p) for d in range(n_d)}
    first = picks[: max(n_p, n_d)]  # every server is used as soon as possible
    assert {p for p, _ in first} == set(range(n_p)) and {d for _, d in first} == set(range(n_d))


def test_pool_register_and_empty() -> None:
    pool = ServerPool([], ["http://d:1"])
    with pytest.raises(LookupError, match="register"):
        pool.select_pair()
    assert pool.register("prefill", "http://p:1", 8998)
    assert not pool.register("prefill", "http://p:1", 8998)
    assert pool.select_pair() == (Prefill("http://p:1", 8998), "http://d:1")
    with pytest.raises(ValueError):
        pool.register("both", "http://x:1", None)


def test_merge_non_stream_single_and_batch() -> None:
    p = {"meta_info": {"input_token_logprobs": [[None, 1, None], [-1.0, 2, None]],
                       "input_top_logprobs": [None, [[-1.0, 2, None]]]}}  # fmt: skip
    d = {"text": "x",
         "meta_info": {"input_token_logprobs": [], "output_token_logprobs": [[-0.1, 5]]}}
    out = merge_input_logprobs(d, p)
    assert out["meta_info"]["input_token_logprobs"] == p["meta_info"]["input_token_logprobs"]
    assert out["meta_info"]["input_top_logprobs"] == p["meta_info"]["input_top_logprobs"]
    assert out["meta_info"]["output_token_logprobs"] == [[-0.1, 5]]
    pb = [{"meta_info": {"input_token_logprobs": [[None, i, None]]}} for i in range(2)]
    db = [{"meta_info": {"input_token_logprobs": [[-2.0, 9, None]]}} for _ in range(2)]
    merged = merge_input_logprobs(db, pb)
    assert [m["meta_info"]["input_token_logprobs"][0][1] for m in merged] == [0, 1]
    assert merged[1]["meta_info"]["input_token_logprobs"][1] == [-2.0, 9, None]


def test_sse_split_merge_and_failure() -> None:
    events, rest = split_events(b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"b"')
    assert events == [b'data: {"a": 1}', b"data: [DONE]"] and rest == b'data: {"b"'
    assert list(iter_json_events(events)) == [{"a": 1}]
    firsts = {0: {"meta_info": {"input_token_logprobs": [[None, 3, None]]}}}
    merged = merge_sse_event(b'data: {"text": "t", "meta_info": {}}', firsts)
    assert json.loads(merged[len(b"data: ") :])["meta_info"]["input_token_logprobs"] == [
        [None, 3, None]
    ]
    assert merge_sse_event(b"data: [DONE]", firsts) == b"data: [DONE]"
    abort = {"meta_info": {"finish_reason": {"type": "abort", "message": "m", "status_code": 503}}}
    assert stream_failure(abort) == (503, "m")
    assert stream_failure({"error": {"message": "bad", "code": 400}}) == (400, "bad")
    assert stream_failure({"text": "ok", "meta_info": {"finish_reason": None}}) is None
    assert error_message(b'{"error": {"message": "too long"}}') == "too long"
    assert error_message(b'{"detail": "nope"}') == "nope"
    assert error_message(b"plain text") == "plain text"


# ---- the real process against stub servers --------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stub:
    """A fake prefill or decode server that records what it receives."""

    def __init__(self, role: str, mode: str = "ok") -> None:
        self.role, self.mode = role, mode
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        self.aborts: list[str] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _answer(self, body: dict[str, Any], i: int) -> dict[str, Any]:
        if self.role == "prefill":
            meta = {"input_token_logprobs": [[None, 1, None], [-0.5, 2, None]]}
            return {"text": "", "index": i, "meta_info": meta}
        meta = {"id": body.get("rid"), "input_token_logprobs": [[-0.25, 3, None]],
                "output_token_logprobs": [[-0.1, 7, None]], "finish_reason": {"type": "length"}}
        return {"text": f"decode {self.port} says hi", "index": i, "meta_info": meta}  # fmt: skip

    async def _gen(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append((request.path, body))
        if self.mode == "hang":
            await asyncio.sleep(60)
        if self.mode == "error":
            return web.json_response({"error": {"message": f"{self.role} exploded"}}, status=500)
        n = len(body["text"]) if isinstance(body.get("text"), list) else None
        if not body.get("stream"):
            if n is None:
                return web.json_response(self._answer(body, 0))
            return web.json_response([self._answer(body, i) for i in range(n)])
        resp = web.StreamResponse()
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        steps = 100 if self.mode == "slow" else 3
        for i in range(n or 1):
            for k in range(steps):
                chunk = self._answer(body, i)
                chunk["text"] = chunk["text"][: 4 * (k + 1)]
                if self.mode == "late_error" and k == 1:
                    await asyncio.sleep(0.3)
                    chunk = {"error": {"message": "KV transfer failed", "code": 500}}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(0.1 if self.mode == "slow" else 0.01)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _abort(self, request: web.Request) -> web.Response:
        self.aborts.append((await request.json())["rid"])
        return web.json_response({})

    def app(self) -> web.Application:
        app = web.Application()
        for path in ("/generate", "/v1/completions", "/v1/chat/completions"):
            app.router.add_post(path, self._gen)
        app.router.add_post("/abort_request", self._abort)
        info = {"role": self.role, "port": self.port, "internal_states": [{"x": 1}]}
        for method, path, answer in [
            ("POST", "/flush_cache", {}),
            ("GET", "/health_generate", {}),
            ("GET", "/get_server_info", info),
            ("GET", "/v1/models", {"data": [{"id": "m"}]}),
        ]:

            async def handler(request: web.Request, answer: Any = answer) -> web.Response:
                return web.json_response(answer)

            app.router.add_route(method, path, handler)
        return app


@pytest.fixture(scope="module")
def stub_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)


def start_stub(loop: asyncio.AbstractEventLoop, role: str, mode: str = "ok") -> Stub:
    stub = Stub(role, mode)

    async def run() -> None:
        runner = web.AppRunner(stub.app(), handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", stub.port).start()

    asyncio.run_coroutine_threadsafe(run(), loop).result(10)
    return stub


class LB:
    def __init__(self, prefills: list[str], decodes: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "sglang.srt.disaggregation.mini_lb", "--prefill", *prefills,
               "--decode", *decodes, "--host", "127.0.0.1", "--port", str(self.port),
               "--timeout", "30", "--prefill-bootstrap-ports", "8123"]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()  # type: ignore[union-attr]
            try:
                if requests.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise TimeoutError("mini_lb did not start")

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return out


@pytest.fixture(scope="module")
def pd(stub_loop: asyncio.AbstractEventLoop) -> Iterator[tuple[LB, Stub, Stub]]:
    prefill, decode = start_stub(stub_loop, "prefill"), start_stub(stub_loop, "decode")
    lb = LB([prefill.url], [decode.url])
    yield lb, prefill, decode
    log = lb.stop()
    assert "mini_lb: 1 prefill, 1 decode" in log, log


def wait_for(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_generate_goes_to_both_and_returns_decode(pd: tuple[LB, Stub, Stub]) -> None:
    lb, prefill, decode = pd
    r = requests.post(f"{lb.url}/generate", json={"text": "hello", "sampling_params": {}})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == f"decode {decode.port} says hi"
    (p_path, p_body), (d_path, d_body) = prefill.bodies[-1], decode.bodies[-1]
    assert p_path == d_path == "/generate" and p_body == d_body
    assert p_body["bootstrap_host"] == "127.0.0.1" and p_body["bootstrap_port"] == 8123
    assert isinstance(p_body["bootstrap_room"], int) and isinstance(p_body["rid"], str)


def test_batch_and_openai_routes(pd: tuple[LB, Stub, Stub]) -> None:
    lb, prefill, decode = pd
    r = requests.post(f"{lb.url}/generate", json={"text": ["a", "b"]})
    assert r.status_code == 200 and len(r.json()) == 2
    body = decode.bodies[-1][1]
    assert prefill.bodies[-1][1] == body and len(set(body["bootstrap_room"])) == 2
    for path in ("/v1/completions", "/v1/chat/completions"):
        r = requests.post(f"{lb.url}{path}", json={"prompt": "x", "messages": []})
        assert r.status_code == 200, r.text
        assert decode.bodies[-1][0] == path and prefill.bodies[-1][1] == decode.bodies[-1][1]
        assert isinstance(decode.bodies[-1][1]["bootstrap_room"], int)
    assert requests.get(f"{lb.url}/v1/models").json() == {"data": [{"id": "m"}]}


def test_unknown_routes_and_non_json_numbers_get_json_errors(pd: tuple[LB, Stub, Stub]) -> None:
    lb, _, _ = pd
    for method, path in (("POST", "/no_such_route"), ("PUT", "/generate")):
        r = requests.request(method, f"{lb.url}{path}", json={}, timeout=10)
        assert r.status_code in (404, 405), r.text
        assert path in r.json()["error"]["message"]
    for raw in (b'{"text": NaN}', b'{"text": Infinity}', b"[" * 100000):
        r = requests.post(f"{lb.url}/generate", data=raw, timeout=10,
                          headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "invalid JSON body" in r.json()["error"]["message"], r.text
    assert requests.post(f"{lb.url}/generate", json={"text": "ok"}, timeout=10).status_code == 200


def test_logprob_merge_through_lb(pd: tuple[LB, Stub, Stub]) -> None:
    lb, _, _ = pd
    r = requests.post(f"{lb.url}/generate", json={"text": "a", "return_logprob": True})
    meta = r.json()["meta_info"]
    assert meta["input_token_logprobs"] == [[None, 1, None], [-0.5, 2, None], [-0.25, 3, None]]
    r = requests.post(f"{lb.url}/generate",
                      json={"text": "a", "return_logprob": True, "stream": True}, stream=True)
    events = [ln for ln in r.iter_lines() if ln.startswith(b"data:")]
    assert events[-1] == b"data: [DONE]" and len(events) == 4
    for ev in events[:-1]:
        assert json.loads(ev[5:])["meta_info"]["input_token_logprobs"][:2] == [
            [None, 1, None], [-0.5, 2, None]]  # fmt: skip


def test_stream_is_piped(pd: tuple[LB, Stub, Stub]) -> None:
    lb, _, decode = pd
    r = requests.post(f"{lb.url}/generate", json={"text": "a", "stream": True}, stream=True)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = [ln for ln in r.iter_lines() if ln.startswith(b"data:")]
    texts = [json.loads(e[5:])["text"] for e in events[:-1]]
    full = f"decode {decode.port} says hi"
    assert texts == [full[:4], full[:8], full[:12]]
    assert events[-1] == b"data: [DONE]"


def test_control_routes(pd: tuple[LB, Stub, Stub]) -> None:
    lb, _, _ = pd
    assert requests.get(f"{lb.url}/health").status_code == 200
    assert requests.get(f"{lb.url}/health_generate").status_code == 200
    assert requests.post(f"{lb.url}/flush_cache").status_code == 200
    info = requests.get(f"{lb.url}/get_server_info").json()
    assert info["prefill"][0]["role"] == "prefill" and info["decode"][0]["role"] == "decode"
    assert info["internal_states"] == [{"x": 1}]
    r = requests.post(f"{lb.url}/generate", data=b"{not json")
    assert r.status_code == 400 and "invalid JSON" in r.json()["error"]["message"]


def test_register_adds_a_decode(pd: tuple[LB, Stub, Stub], stub_loop: Any) -> None:
    lb, _, decode = pd
    second = start_stub(stub_loop, "decode")
    r = requests.post(f"{lb.url}/register",
                      json={"mode": "decode", "registry_url": second.url, "bootstrap_port": None})
    assert r.status_code == 200 and second.url in r.json()["decode"], r.text
    texts = {requests.post(f"{lb.url}/generate", json={"text": "a"}).json()["text"]
             for _ in range(4)}  # fmt: skip
    assert texts == {f"decode {decode.port} says hi", f"decode {second.port} says hi"}
    bad = requests.post(f"{lb.url}/register", json={"mode": "router", "registry_url": "x"})
    assert bad.status_code == 400
    dead = "http://127.0.0.1:9"
    requests.post(f"{lb.url}/register", json={"mode": "prefill", "registry_url": dead})
    r = requests.get(f"{lb.url}/health_generate", timeout=20)
    assert r.status_code == 503 and dead in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_unreachable_prefill_fails_fast(stub_loop: Any, stream: bool) -> None:
    decode = start_stub(stub_loop, "decode", mode="hang")
    dead = f"http://127.0.0.1:{free_port()}"
    lb = LB([dead], [decode.url])
    try:
        t0 = time.time()
        body = {"text": "a", "stream": stream, "rid": "client-rid"}
        r = requests.post(f"{lb.url}/generate", json=body, timeout=20)
        assert time.time() - t0 < 5
        assert r.status_code == 502 and dead in r.json()["error"]["message"], r.text
        # the attempt and its one retry (fresh rid: the client's with -retry1), both aborted
        want = ["client-rid", "client-rid-retry1"]
        assert wait_for(lambda: sorted(decode.aborts) == want), decode.aborts
    finally:
        lb.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_prefill_error_fails_fast(stub_loop: Any, stream: bool) -> None:
    prefill = start_stub(stub_loop, "prefill", mode="error")
    decode = start_stub(stub_loop, "decode", mode="hang")
    lb = LB([prefill.url], [decode.url])
    try:
        t0 = time.time()
        body = {"text": ["a", "b"], "stream": stream}
        r = requests.post(f"{lb.url}/generate", json=body, timeout=20)
        assert time.time() - t0 < 5
        msg = r.json()["error"]["message"]
        assert r.status_code == 502 and prefill.url in msg and "exploded" in msg, r.text
        assert wait_for(lambda: len(decode.aborts) == 4)  # the attempt and its retry
        rids = [r for _, b in prefill.bodies for r in b["rid"]]  # injected rids, fresh per try
        assert len(set(rids)) == 4 and sorted(decode.aborts) == sorted(rids)
    finally:
        lb.stop()


def test_unreachable_decode_fails_fast(stub_loop: Any) -> None:
    prefill = start_stub(stub_loop, "prefill", mode="hang")
    dead = f"http://127.0.0.1:{free_port()}"
    lb = LB([prefill.url], [dead])
    try:
        r = requests.post(f"{lb.url}/v1/chat/completions", json={"messages": []}, timeout=20)
        assert r.status_code == 502 and dead in r.json()["error"]["message"]
        assert wait_for(lambda: len(prefill.aborts) == 2), "prefill legs were not aborted"
    finally:
        lb.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_aborts_decode(stub_loop: Any, stream: bool) -> None:
    prefill = start_stub(stub_loop, "prefill")
    decode = start_stub(stub_loop, "decode", mode="slow" if stream else "hang")
    lb = LB([prefill.url], [decode.url])
    try:
        body = {"text": "a", "stream": stream, "rid": "gone"}
        if stream:
            with requests.post(f"{lb.url}/generate", json=body, stream=True, timeout=20) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # read a little, then hang up
        else:
            with pytest.raises(requests.ReadTimeout):
                requests.post(f"{lb.url}/generate", json=body, timeout=1)
        assert wait_for(lambda: decode.aborts == ["gone"]), decode.aborts
    finally:
        lb.stop()


def test_prefill_failing_mid_stream_ends_the_stream(stub_loop: Any) -> None:
    prefill = start_stub(stub_loop, "prefill", mode="late_error")
    decode = start_stub(stub_loop, "decode", mode="slow")
    lb = LB([prefill.url], [decode.url])
    try:
        t0 = time.time()
        body = {"text": "a", "stream": True, "rid": "mid"}
        r = requests.post(f"{lb.url}/generate", json=body, timeout=20)
        assert r.status_code == 200 and time.time() - t0 < 5
        events = [ln for ln in r.text.split("\n\n") if ln.startswith("data:")]
        assert events[-1] == "data: [DONE]"
        err = json.loads(events[-2][5:])["error"]
        assert prefill.url in err["message"] and "KV transfer failed" in err["message"]
        assert wait_for(lambda: decode.aborts == ["mid"]), decode.aborts
    finally:
        lb.stop()


def test_decode_failing_inside_a_started_stream_aborts_the_prefill(stub_loop: Any) -> None:
    """Issue 11 finding 5: the decode reports a failure in its stream (its SSE error event)
    while the prefill leg is still open: the prefill half is aborted at once."""
    prefill = start_stub(stub_loop, "prefill", mode="hang")
    decode = start_stub(stub_loop, "decode", mode="late_error")
    lb = LB([prefill.url], [decode.url])
    try:
        body = {"text": "a", "stream": True, "rid": "cut"}
        r = requests.post(f"{lb.url}/generate", json=body, timeout=20)
        assert r.status_code == 200
        events = [ln for ln in r.text.split("\n\n") if ln.startswith("data:")]
        assert any("KV transfer failed" in e for e in events), events
        assert wait_for(lambda: prefill.aborts == ["cut"]), prefill.aborts
    finally:
        lb.stop()
