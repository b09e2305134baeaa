"""Send one request to a prefill and a decode at once and answer with the decode's response.

Unlike SGLang's mini_lb, a failed leg ends the attempt at once: the other leg is cancelled and
aborted (``POST /abort_request`` by rid), so neither the client nor a server waits for a
timeout. A server's failure (unreachable, timed out, 5xx) before anything reached the client
raises :class:`Retry` when the job may be retried (``route.py`` picks another pair); otherwise
the client gets the error (502, 503, 504 or the server's status) naming the server. Once a stream
has started, a failure of either leg ends it with an SSE error event and aborts the other leg.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

import aiohttp
from aiohttp import web

from sglang.srt.disaggregation.lb.bodies import (
    error_message,
    iter_json_events,
    merge_input_logprobs,
    merge_sse_event,
    split_events,
    stream_failure,
)
from sglang.srt.disaggregation.lb.legs import (
    ClientGone,
    Job,
    LegError,
    Legs,
    Reply,
    Retry,
    error_response,
    send,
    sse_error,
)

__all__ = ["ClientGone", "Job", "LegError", "Proxy", "Reply", "Retry", "error_response"]
logger = logging.getLogger("sglang.mini_lb")
CHUNK = 64 * 1024
PREFILL_GRACE = 0.5  # seconds a failed decode waits to learn whether the prefill failed too


class Proxy(Legs):
    # ---- the two legs ---------------------------------------------------------------------
    async def _prefill_leg(self, job: Job) -> Reply:
        reply = await self.call("POST", f"{job.prefill}/{job.endpoint}", "prefill", job.body,
                                job, job.prefill)  # fmt: skip
        if reply.status >= 400:
            msg = error_message(reply.body)
            raise LegError(reply.status, f"prefill {job.prefill} returned {reply.status}: {msg}",
                           job.prefill)  # fmt: skip
        try:
            out = json.loads(reply.body)
        except ValueError:
            return reply
        for item in out if isinstance(out, list) else [out]:
            failure = stream_failure(item) if isinstance(item, dict) else None
            if failure is not None:
                raise LegError(failure[0], f"prefill {job.prefill} failed: {failure[1]}",
                               job.prefill)  # fmt: skip
        return reply

    async def _decode_leg(self, job: Job) -> Reply:
        reply = await self.call("POST", f"{job.decode}/{job.endpoint}", "decode", job.body,
                                job, job.decode)  # fmt: skip
        if reply.status >= 500:
            msg = error_message(reply.body)
            raise LegError(reply.status, f"decode {job.decode} returned {reply.status}: {msg}",
                           job.decode)  # fmt: skip
        return reply  # a 4xx (bad request, 499 abort) goes to the client as the decode said

    async def _prefill_stream_leg(self, job: Job) -> dict[int, dict[str, Any]]:
        """Read the prefill's SSE to the end; the first chunk of each index, for merging."""
        assert self.session is not None
        who = f"prefill {job.prefill}"
        firsts: dict[int, dict[str, Any]] = {}
        try:
            async with self.session.post(
                f"{job.prefill}/{job.endpoint}", json=job.body, timeout=self._timeout(True, job)
            ) as resp:
                if resp.status >= 400:
                    msg = error_message(await resp.read())
                    raise LegError(resp.status, f"{who} returned {resp.status}: {msg}",
                                   job.prefill)  # fmt: skip
                buf = b""
                async for chunk in resp.content.iter_chunked(CHUNK):
                    events, buf = split_events(buf + chunk)
                    for obj in iter_json_events(events):
                        failure = stream_failure(obj)
                        if failure is not None:
                            raise LegError(failure[0], f"{who} failed: {failure[1]}", job.prefill)
                        firsts.setdefault(int(obj.get("index", 0) or 0), obj)
        except asyncio.TimeoutError:
            raise LegError(504, f"{who} timed out after {self._limit(job):g}s",
                           job.prefill) from None  # fmt: skip
        except aiohttp.ClientError as e:
            raise LegError(502, f"{who} is unreachable: {e}", job.prefill) from None
        return firsts

    async def _open_decode(self, job: Job) -> aiohttp.ClientResponse:
        assert self.session is not None
        url, who = f"{job.decode}/{job.endpoint}", f"decode {job.decode}"
        try:
            resp = await self.session.post(url, json=job.body, timeout=self._timeout(True, job))
        except asyncio.TimeoutError:
            raise LegError(504, f"{who} timed out after {self._limit(job):g}s",
                           job.decode) from None  # fmt: skip
        except aiohttp.ClientError as e:
            raise LegError(502, f"{who} is unreachable: {e}", job.decode) from None
        if resp.status >= 500:
            try:
                msg = error_message(await resp.read())
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                msg = str(e)
            finally:
                resp.close()
            raise LegError(resp.status, f"{who} returned {resp.status}: {msg}", job.decode)
        return resp

    # ---- non-stream -----------------------------------------------------------------------
    async def forward(self, job: Job) -> web.Response:
        tasks = {
            "prefill": asyncio.create_task(self._prefill_leg(job)),
            "decode": asyncio.create_task(self._decode_leg(job)),
        }
        ok, error = False, None
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            if tasks["prefill"] in done:
                prefill = tasks["prefill"].result()  # raises LegError first if it failed
            decode: Reply = await tasks["decode"]
            if decode.status >= 400:  # the decode's own 4xx answer goes to the client as is
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
            error = e = await self._root_cause(e, job, tasks["prefill"])
            if job.may_retry and e.peer_failure:
                raise Retry(e) from None
            logger.warning("request %s failed: %s", job.rids, e.message)
            return error_response(e.message, e.status)
        finally:
            self._cleanup(job, tasks, ok, error=error)

    @staticmethod
    async def _root_cause(e: LegError, job: Job, prefill: asyncio.Task[Any]) -> LegError:
        """A decode that answered 500 (e.g. its KV transfer failed) while the prefill is still
        at work: give the prefill a moment; if it fails too, its error is the cause (and the
        prefill is the server the circuit breaker blames)."""
        if e.server != job.decode or e.status != 500:
            return e
        if not prefill.done():
            await asyncio.wait([prefill], timeout=PREFILL_GRACE)
        if prefill.done() and not prefill.cancelled():
            cause = prefill.exception()
            if isinstance(cause, LegError) and cause.peer_failure:
                return cause
        return e

    # ---- stream ---------------------------------------------------------------------------
    async def forward_stream(self, request: web.Request, job: Job) -> web.StreamResponse:
        tasks = {
            "prefill": asyncio.create_task(self._prefill_stream_leg(job)),
            "decode": asyncio.create_task(self._open_decode(job)),
        }
        ok = streaming = False
        error: Optional[LegError] = None
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
            broken, told = await self._pipe(decode, out, firsts, job.merge_logprobs)
            prefill = tasks["prefill"]
            if prefill.done() and not prefill.cancelled() and prefill.exception() is not None:
                raise prefill.exception()  # type: ignore[misc]
            if told is not None:  # the decode reported a failure itself: the client saw it
                error = LegError(told[0], f"decode {job.decode} failed: {told[1]}", job.decode)
                logger.warning("stream %s failed: %s", job.rids, error.message)
                return out
            if broken is not None:
                raise LegError(502, f"decode {job.decode} stream broke: {broken}", job.decode)
            ok, streaming = True, False
            try:
                await out.write_eof()
            except ConnectionResetError:
                pass
            return out
        except LegError as e:
            if out is None:
                e = await self._root_cause(e, job, tasks["prefill"])
            error = e
            if out is None and job.may_retry and e.peer_failure:
                raise Retry(e) from None
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
            self._cleanup(job, tasks, ok, streaming, error)

    @staticmethod
    async def _pipe(
        decode: aiohttp.ClientResponse,
        out: web.StreamResponse,
        firsts: dict[int, dict[str, Any]],
        merge: bool,
    ) -> tuple[Optional[str], Optional[tuple[int, str]]]:
        """Copy the decode's SSE to the client. Returns (why the stream broke, or None when it
        ended cleanly; the failure an event of the decode reported, or None)."""
        buf, told = b"", None
        try:
            async for chunk in decode.content.iter_chunked(CHUNK):
                events, buf = split_events(buf + chunk)
                if told is None:
                    told = next(filter(None, map(stream_failure, iter_json_events(events))),
                                None)  # fmt: skip
                if not merge:
                    await send(out, chunk)
                elif events:
                    await send(out, b"".join(merge_sse_event(e, firsts) + b"\n\n" for e in events))
            if buf and merge:
                await send(out, buf)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            return str(e) or type(e).__name__, told
        except asyncio.TimeoutError:
            return "read timed out", told
        return None, told
