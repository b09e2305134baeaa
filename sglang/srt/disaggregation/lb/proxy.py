"""Send one request to a prefill and a decode at once and answer with the decode's response.

Unlike SGLang's mini_lb, a failed leg ends the request at once: an unreachable server or a
prefill error answers the client with that error, and the other leg is cancelled and aborted
(``POST /abort_request`` by rid), so neither the client nor the decode waits for a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, Optional

import aiohttp
from aiohttp import web

from sglang.srt.disaggregation.lb.bodies import (
    error_body,
    error_message,
    iter_json_events,
    merge_input_logprobs,
    merge_sse_event,
    split_events,
    stream_failure,
)

logger = logging.getLogger("sglang.mini_lb")
CHUNK = 64 * 1024


class ClientGone(Exception):
    """The client closed its connection while we were writing to it."""


async def send(out: web.StreamResponse, data: bytes) -> None:
    try:
        await out.write(data)
    except ConnectionResetError as e:  # aiohttp's ClientConnectionResetError included
        raise ClientGone(str(e)) from None


class LegError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str


@dataclass
class Job:
    """One request on its way: where it goes and what it carries."""

    prefill: str
    decode: str
    endpoint: str
    body: dict[str, Any]
    rids: list[str]
    merge_logprobs: bool


def error_response(message: str, status: int) -> web.Response:
    return web.json_response(error_body(message, status), status=status)


def sse_error(message: str, status: int) -> bytes:
    return f"data: {json.dumps(error_body(message, status))}\n\ndata: [DONE]\n\n".encode()


class Proxy:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.connect_timeout = min(timeout, 30.0)
        self.session: Optional[aiohttp.ClientSession] = None
        self._background: set[asyncio.Task[Any]] = set()

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
    def _timeout(self, stream: bool) -> aiohttp.ClientTimeout:
        if stream:
            return aiohttp.ClientTimeout(sock_connect=self.connect_timeout, sock_read=self.timeout)
        return aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout)

    async def call(self, method: str, url: str, role: str, body: Any = None) -> Reply:
        """One HTTP call; connection failures and timeouts become LegError naming the server."""
        assert self.session is not None
        try:
            async with self.session.request(
                method, url, json=body, timeout=self._timeout(False)
            ) as resp:
                return Reply(resp.status, await resp.read(), resp.content_type)
        except asyncio.TimeoutError:
            raise LegError(504, f"{role} {url} timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise LegError(502, f"{role} {url} is unreachable: {e}") from None

    async def abort(self, server: str, rids: list[str]) -> None:
        for rid in rids:
            try:
                await self.call("POST", f"{server}/abort_request", "abort", {"rid": rid})
            except LegError as e:
                logger.debug("abort of %s on %s failed: %s", rid, server, e.message)

    def abort_later(self, server: str, rids: list[str]) -> None:
        self._keep(asyncio.create_task(self.abort(server, rids)))

    # ---- the two legs ---------------------------------------------------------------------
    async def _prefill_leg(self, job: Job) -> Reply:
        reply = await self.call("POST", f"{job.prefill}/{job.endpoint}", "prefill", job.body)
        if reply.status >= 400:
            msg = error_message(reply.body)
            raise LegError(reply.status, f"prefill {job.prefill} returned {reply.status}: {msg}")
        try:
            out = json.loads(reply.body)
        except ValueError:
            return reply
        for item in out if isinstance(out, list) else [out]:
            failure = stream_failure(item) if isinstance(item, dict) else None
            if failure is not None:
                raise LegError(failure[0], f"prefill {job.prefill} failed: {failure[1]}")
        return reply

    async def _prefill_stream_leg(self, job: Job) -> dict[int, dict[str, Any]]:
        """Read the prefill's SSE to the end; the first chunk of each index, for merging."""
        assert self.session is not None
        who = f"prefill {job.prefill}"
        firsts: dict[int, dict[str, Any]] = {}
        try:
            async with self.session.post(
                f"{job.prefill}/{job.endpoint}", json=job.body, timeout=self._timeout(True)
            ) as resp:
                if resp.status >= 400:
                    msg = error_message(await resp.read())
                    raise LegError(resp.status, f"{who} returned {resp.status}: {msg}")
                buf = b""
                async for chunk in resp.content.iter_chunked(CHUNK):
                    events, buf = split_events(buf + chunk)
                    for obj in iter_json_events(events):
                        failure = stream_failure(obj)
                        if failure is not None:
                            raise LegError(failure[0], f"{who} failed: {failure[1]}")
                        firsts.setdefault(int(obj.get("index", 0) or 0), obj)
        except asyncio.TimeoutError:
            raise LegError(504, f"{who} timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise LegError(502, f"{who} is unreachable: {e}") from None
        return firsts

    async def _open_decode(self, job: Job) -> aiohttp.ClientResponse:
        assert self.session is not None
        url = f"{job.decode}/{job.endpoint}"
        try:
            return await self.session.post(url, json=job.body, timeout=self._timeout(True))
        except asyncio.TimeoutError:
            raise LegError(504, f"decode {job.decode} timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as e:
            raise LegError(502, f"decode {job.decode} is unreachable: {e}") from None

    def _cleanup(
        self, job: Job, tasks: dict[str, asyncio.Task[Any]], ok: bool, streaming: bool = False
    ) -> None:
        """Cancel unfinished legs; after a failure, abort the legs that did not succeed.

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

    # ---- non-stream -----------------------------------------------------------------------
    async def forward(self, job: Job) -> web.Response:
        tasks = {
            "prefill": asyncio.create_task(self._prefill_leg(job)),
            "decode": asyncio.create_task(
                self.call("POST", f"{job.decode}/{job.endpoint}", "decode", job.body)
            ),
        }
        ok = False
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if tasks["prefill"] in done:
                prefill = tasks["prefill"].result()  # raises LegError first if it failed
            decode: Reply = await tasks["decode"]
            if decode.status >= 400:  # the decode's own error answer goes to the client as is
                return web.Response(body=decode.body, status=decode.status,
                                    content_type=decode.content_type)  # fmt: skip
            ok = True
            if not job.merge_logprobs:
                return web.Response(body=decode.body, status=decode.status,
                                    content_type=decode.content_type)  # fmt: skip
            prefill = await tasks["prefill"]
            merged = merge_input_logprobs(json.loads(decode.body), json.loads(prefill.body))
            return web.json_response(merged, status=decode.status)
        except LegError as e:
            logger.warning("request %s failed: %s", job.rids, e.message)
            return error_response(e.message, e.status)
        finally:
            self._cleanup(job, tasks, ok)

    # ---- stream ---------------------------------------------------------------------------
    async def forward_stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        tasks = {
            "prefill": asyncio.create_task(self._prefill_stream_leg(job)),
            "decode": asyncio.create_task(self._open_decode(job)),
        }
        ok = streaming = False
        decode: Optional[aiohttp.ClientResponse] = None
        out: Optional[web.StreamResponse] = None
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if tasks["prefill"] in done and tasks["prefill"].exception() is not None:
                raise tasks["prefill"].exception()  # type: ignore[misc]
            decode = await tasks["decode"]
            if decode.status >= 400:
                return web.Response(body=await decode.read(), status=decode.status,
                                    content_type=decode.content_type)  # fmt: skip
            firsts = await tasks["prefill"] if job.merge_logprobs else {}
            d = decode
            tasks["prefill"].add_done_callback(
                lambda t: t.cancelled() or t.exception() is None or d.close()
            )
            out = web.StreamResponse(status=decode.status)
            out.content_type = decode.content_type or "text/event-stream"
            streaming = True
            await out.prepare(request)
            broken = await self._pipe(decode, out, firsts, job.merge_logprobs)
            prefill = tasks["prefill"]
            if prefill.done() and not prefill.cancelled() and prefill.exception() is not None:
                raise prefill.exception()  # type: ignore[misc]
            if broken is not None:
                raise LegError(502, f"decode {job.decode} stream broke: {broken}")
            ok, streaming = True, False
            try:
                await out.write_eof()
            except ConnectionResetError:
                pass
            return out
        except LegError as e:
            logger.warning("stream %s failed: %s", job.rids, e.message)
            if out is None:
                return error_response(e.message, e.status)
            try:
                await send(out, sse_error(e.message, e.status))
            except ClientGone:
                pass
            return out
        except ClientGone:
            logger.info("client of %s went away; aborting", job.rids)
            return out or error_response("client went away", 499)
        finally:
            if decode is not None:
                decode.close()
            self._cleanup(job, tasks, ok, streaming)

    @staticmethod
    async def _pipe(
        decode: aiohttp.ClientResponse,
        out: web.StreamResponse,
        firsts: dict[int, dict[str, Any]],
        merge: bool,
    ) -> Optional[str]:
        """Copy the decode's SSE to the client; None when it ended cleanly, else the reason."""
        buf = b""
        try:
            async for chunk in decode.content.iter_chunked(CHUNK):
                if not merge:
                    await send(out, chunk)
                    continue
                events, buf = split_events(buf + chunk)
                if events:
                    merged = b"".join(merge_sse_event(e, firsts) + b"\n\n" for e in events)
                    await send(out, merged)
            if buf:
                await send(out, buf)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            return str(e) or type(e).__name__
        except asyncio.TimeoutError:
            return "read timed out"
        return None
