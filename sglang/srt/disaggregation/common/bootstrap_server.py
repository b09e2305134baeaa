"""The prefill's bootstrap server: where decodes learn how to reach the prefill's KV manager.

Plain HTTP in a daemon thread of the prefill scheduler process, on --disaggregation-bootstrap-port
(default 8998), bound to the prefill's --host (0.0.0.0 only when --host says so):

  PUT /route    the prefill manager registers itself (rank_ip, rank_port of its ZMQ PULL
                socket, page_size, kv_dtype, model_shape, transfer info); JSON body. Only the
                prefill's own ranks may: the request must carry the header X-Bootstrap-Secret
                with this server's per-instance secret (generated here, or given by
                SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET), else 401/403. A rank registered once
                keeps its registration: another one for it (other rank_ip/rank_port) is 409.
  GET /route    that registration as JSON (``?engine_rank=N&dp_rank=D``, both default 0); 503
                until registered. With --dp-size, every prefill replica registers under its
                ``dp_rank`` (routes are keyed by (dp_rank, engine_rank)); replica 0 runs this
                server and its registration carries ``dp_size``.
  GET /health   "OK" (the decode heartbeat)

Bad input (a non-integer rank, a body that is not a JSON object with the fields' types, a body
over 1 MiB) gets 400/413 with the reason, and the connection is closed after it.

Every answer carries the header X-Bootstrap-Instance, an id that changes when the prefill
restarts (GET /route also has it as "bootstrap_instance"): a decode that sees it change knows
its cached connection to the prefill is stale, even if the heartbeat never missed.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import secrets
import socket
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, urlparse

from sglang.srt.env import envs
from sglang.srt.utils.network import DEFAULT_BOOTSTRAP_PORT, LOOPBACK

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Bootstrap-Secret"
MAX_BODY = 1 << 20
# field -> accepted types of a registration
_FIELDS: dict[str, tuple[type, ...]] = {
    "rank_ip": (str,), "rank_port": (int,), "page_size": (int,), "kv_dtype": (str,),
    "model_shape": (dict,),
}


class BadInput(ValueError):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def parse_rank(raw: Any, what: str = "engine_rank") -> int:
    """An engine (or DP) rank from a query string or a body: a non-negative int below 2**16."""
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise BadInput(400, f"{what} must be an integer, got {raw!r:.40}")
    try:
        rank = int(raw)
    except ValueError:
        raise BadInput(400, f"{what} must be an integer, got {raw!r:.40}") from None
    if not 0 <= rank < 1 << 16:
        raise BadInput(400, f"{what} must be in [0, 65536), got {rank}")
    return rank


def check_registration(info: Any) -> tuple[int, int]:
    """(dp_rank, engine_rank) of a well-formed registration; BadInput otherwise."""
    if not isinstance(info, dict):
        raise BadInput(400, "bad registration: the body must be a JSON object")
    for key, types in _FIELDS.items():
        if key not in info:
            raise BadInput(400, f"bad registration: missing field {key!r}")
        v = info[key]
        if isinstance(v, bool) or not isinstance(v, types):
            raise BadInput(400, f"bad registration: field {key!r} has the wrong type")
    if not 0 < info["rank_port"] < 65536:
        raise BadInput(400, f"bad registration: rank_port {info['rank_port']} out of range")
    dp_rank = parse_rank(info.get("dp_rank", 0), "dp_rank")
    dp_size = info.get("dp_size", 1)
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or not dp_rank < dp_size <= 65536:
        raise BadInput(400, f"bad registration: dp_size must be an integer in "
                            f"({dp_rank}, 65536], got {dp_size!r:.40}")
    return dp_rank, parse_rank(info.get("engine_rank", 0))


def _dp(dp_rank: int) -> str:
    return f" (DP rank {dp_rank})" if dp_rank else ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    routes: dict[tuple[int, int], dict[str, Any]]  # (dp_rank, engine_rank) -> registration
    lock: threading.Lock
    instance: str
    secret: str


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep access logs out of the server log
        logger.debug("bootstrap %s - " + fmt, self.address_string(), *args)

    def _reply(self, code: int, body: Any) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        if code >= 400:
            self.close_connection = True  # an unread body must not be parsed as a request
            if code != 503:
                logger.warning("Bootstrap: %s from %s answered %d: %s",
                               self.command, self.client_address[0], code, body)
        self.send_response(code)
        kind = "text/plain" if isinstance(body, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("X-Bootstrap-Instance", self.server.instance)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        url = urlparse(self.path)
        if url.path == "/health":
            self._reply(200, "OK")
        elif url.path == "/route":
            try:
                q = parse_qs(url.query, keep_blank_values=True)
                rank = parse_rank(q.get("engine_rank", ["0"])[0])
                dp_rank = parse_rank(q.get("dp_rank", ["0"])[0], "dp_rank")
            except BadInput as e:
                self._reply(e.code, str(e))
                return
            with self.server.lock:
                info = self.server.routes.get((dp_rank, rank))
            if info is None:
                self._reply(503, f"prefill rank {rank}{_dp(dp_rank)} has not registered yet")
            else:
                self._reply(200, {**info, "bootstrap_instance": self.server.instance})
        else:
            self._reply(404, f"no route {url.path}")

    def do_PUT(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        if url.path != "/route":
            self._reply(404, f"no route {url.path}")
            return
        try:
            key, info = self._registration()
        except BadInput as e:
            self._reply(e.code, str(e))
            return
        dp_rank, rank = key
        with self.server.lock:
            old = self.server.routes.get(key)
            same = old is not None and (old["rank_ip"], old["rank_port"]) == (
                info["rank_ip"], info["rank_port"])
            if old is None or same:
                self.server.routes[key] = info
        if old is not None and not same:
            self._reply(409, f"prefill rank {rank}{_dp(dp_rank)} is already registered at "
                             f"{old['rank_ip']}:{old['rank_port']}")
            return
        logger.info(
            "Bootstrap: prefill rank %d%s registered at %s:%s",
            rank, _dp(dp_rank), info["rank_ip"], info["rank_port"],
        )
        self._reply(200, "OK")

    def _not_allowed(self) -> None:
        self._reply(405, f"{self.command} not allowed: GET /route, GET /health, PUT /route")

    do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

    def _registration(self) -> tuple[tuple[int, int], dict[str, Any]]:
        given = self.headers.get(SECRET_HEADER)
        if not given:
            raise BadInput(401, f"registration needs the {SECRET_HEADER} header")
        if not hmac.compare_digest(given.encode(), self.server.secret.encode()):
            raise BadInput(403, "registration refused: wrong bootstrap secret")
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise BadInput(411 if "Content-Length" not in self.headers else 400,
                           "PUT /route needs a valid Content-Length") from None
        if n < 0:
            raise BadInput(400, f"bad Content-Length {n}")
        if n > MAX_BODY:
            raise BadInput(413, f"registration body of {n} bytes exceeds {MAX_BODY}")
        try:
            info = json.loads(self.rfile.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(400, f"bad registration: not JSON ({e})") from None
        return check_registration(info), info


class BootstrapServer:
    """Starts serving in the constructor; ``close()`` stops it. ``secret`` is what a rank's
    PUT /route must carry (from ``secret``, else SGLANG_DISAGGREGATION_BOOTSTRAP_SECRET, else
    a fresh random one)."""

    def __init__(self, host: str = LOOPBACK, port: int = DEFAULT_BOOTSTRAP_PORT,
                 secret: Optional[str] = None):
        self.host = host
        self.port = port
        self.secret = secret or envs.bootstrap_secret or secrets.token_hex(16)
        try:
            server_cls = _Server6 if ":" in host else _Server
            self._httpd = server_cls((host, port), _Handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise RuntimeError(
                    f"Bootstrap server cannot listen on {host}:{port}: port {port} is already in "
                    f"use (another prefill server?). Choose a free port with "
                    f"--disaggregation-bootstrap-port."
                ) from e
            raise RuntimeError(
                f"Bootstrap server cannot listen on {host}:{port}: {e.strerror}. "
                f"Change the port with --disaggregation-bootstrap-port."
            ) from e
        self._httpd.routes = {}
        self._httpd.lock = threading.Lock()
        self._httpd.instance = self.instance = uuid.uuid4().hex
        self._httpd.secret = self.secret
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
            name="kv-bootstrap-server", daemon=True,
        )
        self._thread.start()
        logger.info("Bootstrap server listening on %s:%d", host, port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2)
