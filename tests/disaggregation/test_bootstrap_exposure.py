"""The bootstrap server (in-process, real HTTP on loopback): it binds only where it is told,
takes registrations only with its per-instance secret, never lets a registered rank be
overwritten, and answers malformed requests with 4xx and the reason instead of closing the
connection. (The same checks against a live prefill: test_pd_bad_control_input.py.)"""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from sglang.srt.disaggregation.common.bootstrap_server import BootstrapServer
from sglang.srt.disaggregation.common.handshake import (
    fetch_prefill_info,
    register_prefill,
)
from sglang.srt.disaggregation.common.utils import free_port

INFO = {
    "rank_ip": "127.0.0.1", "rank_port": 5555, "backend": "mooncake", "page_size": 16,
    "kv_dtype": "torch.bfloat16",
    "model_shape": {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64},
}


@pytest.fixture(scope="module")
def server():
    port = free_port()
    s = BootstrapServer("127.0.0.1", port)
    register_prefill(f"127.0.0.1:{port}", INFO, s.secret)
    yield s
    s.close()


def request(server: BootstrapServer, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def put(server: BootstrapServer, body: bytes, secret: str | None = "own") -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers["X-Bootstrap-Secret"] = server.secret if secret == "own" else secret
    return request(server, "PUT", "/route", body, headers)


def test_foreign_registration_is_refused_and_the_route_kept(server) -> None:
    bogus = json.dumps({**INFO, "rank_ip": "10.6.6.6", "rank_port": 6666}).encode()
    assert put(server, bogus, secret=None) == (
        401, "registration needs the X-Bootstrap-Secret header")
    assert put(server, bogus, secret="guess") == (
        403, "registration refused: wrong bootstrap secret")
    # even with the secret, a registered rank cannot be moved elsewhere
    code, text = put(server, bogus)
    assert code == 409 and "rank 0 is already registered at 127.0.0.1:5555" in text
    info = fetch_prefill_info(f"127.0.0.1:{server.port}")
    assert (info["rank_ip"], info["rank_port"]) == ("127.0.0.1", 5555)
    assert server.secret not in json.dumps(info)
    # the same registration again (a retried PUT) is fine
    assert put(server, json.dumps(INFO).encode()) == (200, "OK")


@pytest.mark.parametrize("query, message", [
    ("engine_rank=abc", "engine_rank must be an integer, got 'abc'"),
    ("engine_rank=-1", "engine_rank must be in [0, 65536), got -1"),
    ("engine_rank=99999999999999999999", "engine_rank must be in [0, 65536)"),
])
def test_bad_engine_rank_is_400(server, query: str, message: str) -> None:
    code, text = request(server, "GET", f"/route?{query}")
    assert code == 400 and message in text
    assert request(server, "GET", "/route?engine_rank=3")[0] == 503  # valid, not registered


@pytest.mark.parametrize("body, message", [
    (b"{oops", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({k: v for k, v in INFO.items() if k != "rank_port"}).encode(),
     "missing field 'rank_port'"),
    (json.dumps({**INFO, "rank_port": "5555"}).encode(), "field 'rank_port' has the wrong type"),
    (json.dumps({**INFO, "rank_port": True}).encode(), "field 'rank_port' has the wrong type"),
    (json.dumps({**INFO, "rank_port": 70000}).encode(), "rank_port 70000 out of range"),
    (json.dumps({**INFO, "engine_rank": "x"}).encode(), "engine_rank must be an integer"),
    (json.dumps({**INFO, "model_shape": [1]}).encode(), "field 'model_shape' has the wrong type"),
])
def test_malformed_registration_is_400(server, body: bytes, message: str) -> None:
    code, text = put(server, body)
    assert code == 400 and message in text, (code, text)


def test_oversized_and_lying_bodies(server) -> None:
    big = {"Content-Length": str(64 << 20), "X-Bootstrap-Secret": server.secret}
    code, text = request(server, "PUT", "/route", b"{}", big)
    assert code == 413 and "exceeds" in text
    code, text = request(server, "PUT", "/route", b"{}", {
        "Content-Length": "-5", "X-Bootstrap-Secret": server.secret})
    assert code == 400 and "Content-Length" in text
    # raw garbage instead of HTTP: a 400 from the HTTP layer, and the server keeps serving
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x00\x01 /route HTTP/1.1\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 501")
    assert request(server, "GET", "/health") == (200, "OK")


def test_binds_only_where_told() -> None:
    port = free_port()
    s = BootstrapServer("127.0.0.2", port)
    try:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        s.close()
