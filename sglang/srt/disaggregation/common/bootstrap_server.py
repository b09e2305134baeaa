"""The prefill's bootstrap server: where decodes learn how to reach the prefill's KV manager.

Plain HTTP in a daemon thread of the prefill scheduler process, on --disaggregation-bootstrap-port
(default 8998):

  PUT /route    the prefill manager registers itself (rank_ip, rank_port of its ZMQ PULL
                socket, page_size, kv_dtype, model_shape, transfer info); JSON body
  GET /route    that registration as JSON (``?engine_rank=N``, default 0); 503 until registered
  GET /health   "OK" (the decode heartbeat)

Every answer carries the header X-Bootstrap-Instance, an id that changes when the prefill
restarts (GET /route also has it as "bootstrap_instance"): a decode that sees it change knows
its cached connection to the prefill is stale, even if the heartbeat never missed.
"""

from __future__ import annotations

import errno
import json
import logging
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from sglang.srt.utils.network import DEFAULT_BOOTSTRAP_PORT

logger = logging.getLogger(__name__)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    routes: dict[int, dict[str, Any]]
    lock: threading.Lock
    instance: str


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep access logs out of the server log
        logger.debug("bootstrap %s - " + fmt, self.address_string(), *args)

    def _reply(self, code: int, body: Any) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        kind = "text/plain" if isinstance(body, str) else "application/json"
        self.send_header("Content-Type", kind)
        self.send_header("X-Bootstrap-Instance", self.server.instance)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        url = urlparse(self.path)
        if url.path == "/health":
            self._reply(200, "OK")
        elif url.path == "/route":
            q = parse_qs(url.query)
            rank = int(q.get("engine_rank", ["0"])[0])
            with self.server.lock:
                info = self.server.routes.get(rank)
            if info is None:
                self._reply(503, f"prefill rank {rank} has not registered yet")
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
            n = int(self.headers.get("Content-Length", "0"))
            info = json.loads(self.rfile.read(n))
            rank = int(info.get("engine_rank", 0))
            for key in ("rank_ip", "rank_port", "page_size", "kv_dtype", "model_shape"):
                if key not in info:
                    raise ValueError(f"missing field {key!r}")
        except (ValueError, TypeError) as e:
            self._reply(400, f"bad registration: {e}")
            return
        with self.server.lock:
            self.server.routes[rank] = info
        logger.info(
            "Bootstrap: prefill rank %d registered at %s:%s",
            rank, info["rank_ip"], info["rank_port"],
        )
        self._reply(200, "OK")


class BootstrapServer:
    """Starts serving in the constructor; ``close()`` stops it."""

    def __init__(self, host: str = "0.0.0.0", port: int = DEFAULT_BOOTSTRAP_PORT):
        self.host = host
        self.port = port
        try:
            self._httpd = _Server((host, port), _Handler)
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
