"""The pieces of one proxied request: the job, its errors, plain HTTP calls to a server, aborts,
and the clean-up after a leg failed (cancel, ``POST /abort_request``, circuit-breaker outcome).

``proxy.py`` builds the prefill and decode legs of a request on top of :class:`Legs`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import aiohttp
from aiohttp import web

from sglang.srt.disaggregation.lb.bodies import error_body

logger = logging.getLogger("sglang.mini_lb")


class ClientGone(Exception):
    """The client closed its connection while we were writing to it."""


async def send(out: web.StreamResponse, data: bytes) -> None:
    try:
        await out.write(data)
    except ConnectionResetError as e:  # aiohttp's ClientConnectionResetError included
        raise ClientGone(str(e)) from None


class LegError(Exception):
    """A failed leg: the status the client gets, a message naming the server, and the server
    to blame (None when the request itself is at fault). A server's own 5xx reaches the client
    as 502 (a peer error; the message keeps the server's status), its 503 and 504 as they are."""

    def __init__(self, status: int, message: str, server: Optional[str] = None) -> None:
        super().__init__(message)
        if server is not None and status >= 500 and status not in (502, 503, 504):
            status = 502
        self.status, self.message, self.server = status, message, server

    @property
    def peer_failure(self) -> bool:
        """A server's fault (unreachable, timed out, 5xx): worth a retry elsewhere."""
        return self.server is not None and self.status >= 500


class Retry(Exception):
    """The attempt failed before anything reached the client and may be tried again."""

    def __init__(self, error: LegError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str


@dataclass
class Job:
    """One attempt of a request: where it goes and what it carries."""

    prefill: str
    decode: str
    endpoint: str
    body: dict[str, Any]
    rids: list[str]
    merge_logprobs: bool
    timeout: Optional[float] = None  # seconds left for this attempt (None: the proxy's)
    may_retry: bool = False  # a failure before streaming raises Retry instead of answering


def error_response(message: str, status: int) -> web.Response:
    return web.json_response(error_body(message, status), status=status)


def sse_error(message: str, status: int) -> bytes:
    return f"data: {json.dumps(error_body(message, status))}\n\ndata: [DONE]\n\n".encode()


class Legs:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.connect_timeout = min(timeout, 30.0)
        self.session: Optional[aiohttp.ClientSession] = None
        self._background: set[asyncio.Task[Any]] = set()
        # told each server's outcome per request (the circuit breakers), set by the app
        self.report: Callable[[str, bool], None] = lambda url, ok: None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        if self.session is not None:
            await self.session.close()

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- plain calls ----------------------------------------------------------------------
    def _limit(self, job: Optional[Job] = None) -> float:
        return job.timeout if job is not None and job.timeout is not None else self.timeout

    def _timeout(self, stream: bool, job: Optional[Job] = None) -> aiohttp.ClientTimeout:
        limit = self._limit(job)
        connect = min(limit, self.connect_timeout)
        if stream:
            return aiohttp.ClientTimeout(sock_connect=connect, sock_read=limit)
        return aiohttp.ClientTimeout(total=limit, sock_connect=connect)

    async def call(self, method: str, url: str, role: str, body: Any = None,
                   job: Optional[Job] = None, server: Optional[str] = None) -> Reply:  # fmt: skip
        """One HTTP call; connection failures and timeouts become LegError naming the server."""
        assert self.session is not None
        try:
            async with self.session.request(
                method, url, json=body, timeout=self._timeout(False, job)
            ) as resp:
                return Reply(resp.status, await resp.read(), resp.content_type)
        except asyncio.TimeoutError:
            raise LegError(504, f"{role} {url} timed out after {self._limit(job):g}s",
                           server) from None  # fmt: skip
        except aiohttp.ClientError as e:
            raise LegError(502, f"{role} {url} is unreachable: {e}", server) from None

    async def abort(self, server: str, rids: list[str]) -> None:
        for rid in rids:
            try:
                await self.call("POST", f"{server}/abort_request", "abort", {"rid": rid})
            except LegError as e:
                logger.debug("abort of %s on %s failed: %s", rid, server, e.message)

    def abort_later(self, server: str, rids: list[str]) -> None:
        self._keep(asyncio.create_task(self.abort(server, rids)))

    def _cleanup(self, job: Job, tasks: dict[str, asyncio.Task[Any]], ok: bool,
                 streaming: bool = False, error: Optional[LegError] = None) -> None:  # fmt: skip
        """Cancel unfinished legs; after a failure, abort the legs that did not succeed; tell
        the circuit breakers how each server did.

        ``streaming``: the decode's response is still being read, so its leg is unfinished
        although its task (which opened the response) is done."""
        for role, task in tasks.items():
            finished_ok = task.done() and not task.cancelled() and task.exception() is None
            if role == "decode" and streaming:
                finished_ok = False
            if not finished_ok and not ok:
                task.cancel()
                self.abort_later(job.prefill if role == "prefill" else job.decode, job.rids)
            elif not task.done():
                self._keep(task)  # e.g. the prefill answer after the decode's: let it drain
        if ok:
            self.report(job.prefill, True)
            self.report(job.decode, True)
        elif error is not None and error.peer_failure:
            self.report(error.server, False)  # type: ignore[arg-type]
