"""What every HTTP request passes first: the --api-key check and the server's start-up state.

The HTTP port opens while the scheduler still loads and warms up the model (so /health can say
503 instead of refusing connections); :class:`ServerState` holds the TokenizerManager once it
exists. :class:`GateMiddleware` (plain ASGI, so streaming and disconnect detection are
untouched) answers before any route:

- with ``--api-key``: every route but /health, /health_generate, /metrics (as SGLang) and
  /ready (a probe) needs ``Authorization: Bearer KEY``; missing or wrong -> 401 with an
  OpenAI-style error body. The key is compared in constant time.
- while starting: 503 with a message (routes need the engine).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from typing import Any, Optional

from sglang.srt.env import envs
from sglang.srt.server_args import ServerArgs

AUTH_EXEMPT = ("/health", "/health_generate", "/metrics", "/ready")

logger = logging.getLogger(__name__)


class ServerState:
    def __init__(self, args: ServerArgs, tm: Any = None, proc: Any = None):
        self.args = args
        self.tm = tm
        self.proc = proc  # the scheduler processes (``SchedulerHandle.named``), watched once the
        # event loop runs
        self.error: Optional[str] = None
        self._watched = False

    @property
    def ready(self) -> bool:
        return self.tm is not None

    def set_engine(self, tm: Any, proc: Any) -> None:
        self.proc = proc
        self.tm = tm

    def watch(self) -> None:
        """Start watching the scheduler process (from the event loop, once)."""
        if not self._watched and self.tm is not None and self.proc is not None:
            self._watched = True
            self.tm.watch_scheduler(self.proc).add_done_callback(self._after_scheduler_death)

    def _after_scheduler_death(self, task: asyncio.Task) -> None:
        """A dead scheduler is a dead server: the waiting requests got their 503 and the other
        ranks were stopped (scheduler_watch.py); the HTTP process keeps answering 503 for
        SGLANG_DEAD_SCHEDULER_EXIT_DELAY seconds (so the answers get out and a balancer's
        health check sees it), then exits with code 1 for the orchestrator to restart it."""
        if task.cancelled() or not self.tm.scheduler_dead:
            return
        delay = envs.dead_scheduler_exit_delay
        if delay < 0:
            return
        logger.error("exiting in %.1f s (SGLANG_DEAD_SCHEDULER_EXIT_DELAY)", delay)
        asyncio.get_running_loop().call_later(delay, _exit_dead)


def _exit_dead() -> None:
    logger.error("exiting: the scheduler is gone")
    logging.shutdown()
    os._exit(1)


class LateTM:
    """Stands for the TokenizerManager before it exists (routes are built at start-up)."""

    def __init__(self, state: ServerState):
        object.__setattr__(self, "_state", state)

    def __getattr__(self, name: str) -> Any:
        tm = self._state.tm
        if tm is None:
            raise RuntimeError("the server is still starting")
        return getattr(tm, name)


def openai_error(message: str, status: int, err_type: str, code: Any) -> bytes:
    body = {"object": "error",
            "error": {"message": message, "type": err_type, "param": None, "code": code}}
    return json.dumps(body).encode()


def _bearer(scope: dict) -> Optional[bytes]:
    for k, v in scope.get("headers", []):
        if k == b"authorization":
            scheme, _, token = v.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


class GateMiddleware:
    def __init__(self, app: Any, state: ServerState):
        self.app = app
        self.state = state
        key = state.args.api_key
        self.key = key.encode() if key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if self.key is not None and path not in AUTH_EXEMPT and scope.get("method") != "OPTIONS":
            token = _bearer(scope)
            if token is None:
                msg = "missing API key: send the header 'Authorization: Bearer <key>'"
                return await _send(send, 401, openai_error(msg, 401, "AuthenticationError",
                                                           "invalid_api_key"))
            if not hmac.compare_digest(token, self.key):
                return await _send(send, 401, openai_error(
                    "incorrect API key provided", 401, "AuthenticationError", "invalid_api_key"))
        if not self.state.ready and path not in ("/health", "/ready"):
            msg = self.state.error or "the server is starting (loading and warming up the model)"
            return await _send(send, 503, openai_error(msg, 503, "ServiceUnavailableError", 503))
        self.state.watch()
        await self.app(scope, receive, send)


async def _send(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
