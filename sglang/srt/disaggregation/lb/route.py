"""One generation request from arrival to answer: pick a (prefill, decode) pair among the
servers in rotation, send it, and when the attempt fails before anything reached the client
(``proxy.Retry``), try once more (``--retry-max-retries``) on another pair with a fresh
bootstrap room and fresh request ids, within what is left of ``--timeout``.

Answers of mini_lb's own: 503 when a whole side is out of rotation (the side named), 502/504
from the last attempt's failure (the server named), 400 for a body that is not a JSON object.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Callable, Optional

from aiohttp import web

from sglang.srt.disaggregation.lb.bodies import (
    ensure_rids,
    inject_bootstrap,
    request_text,
    wants_logprob_merge,
)
from sglang.srt.disaggregation.lb.legs import Job, LegError, Retry, error_response
from sglang.srt.disaggregation.lb.policy import LoadFn
from sglang.srt.disaggregation.lb.pool import ServerPool
from sglang.srt.disaggregation.lb.proxy import Proxy

logger = logging.getLogger("sglang.mini_lb")


async def json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw, parse_constant=_not_json)
    except ValueError as e:
        raise LegError(400, f"invalid JSON body: {e}") from None
    except RecursionError:
        raise LegError(400, "invalid JSON body: nested too deeply") from None


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def fresh_rids(body: dict[str, Any], rids: list[str], attempt: int, own: bool) -> list[str]:
    """Request ids for a retry (the failed attempt's may still be known to a server): new ones
    where mini_lb made them, the client's with ``-retryN`` appended otherwise."""
    new = [uuid.uuid4().hex if own else f"{r}-retry{attempt}" for r in rids]
    body["rid"] = new if isinstance(body.get("rid"), list) else new[0]
    return new


async def route(request: web.Request, endpoint: str, pool: ServerPool, proxy: Proxy,
                max_attempts: int, fetch_load: LoadFn,
                on_retry: Optional[Callable[[Job, LegError], None]] = None,
                ) -> web.StreamResponse:  # fmt: skip
    t0 = time.monotonic()
    try:
        body = await json_body(request)
        if not isinstance(body, dict):
            raise LegError(400, "request body must be a JSON object")
    except LegError as e:
        return error_response(e.message, e.status)
    text = request_text(body, endpoint)
    own_rids = body.get("rid") is None
    rids = ensure_rids(body, endpoint)
    merge = endpoint == "generate" and wants_logprob_merge(body)
    avoid: frozenset[str] = frozenset()
    last: Optional[LegError] = None
    for attempt in range(max_attempts):
        left = proxy.timeout - (time.monotonic() - t0)
        if attempt and left <= 0:
            break
        try:
            prefill, decode = await pool.choose(text, fetch_load, avoid)
        except LookupError as e:
            if last is not None:  # the retry found nothing: answer the first failure
                break
            return error_response(str(e), 503)
        if attempt:
            rids = fresh_rids(body, rids, attempt, own_rids)
        sent = inject_bootstrap(body, prefill, endpoint)
        job = Job(prefill.url, decode, endpoint, sent, rids, merge, left,
                  may_retry=attempt + 1 < max_attempts)  # fmt: skip
        logger.debug("%s rid=%s room=%s -> %s + %s (attempt %d)", endpoint, rids,
                     sent["bootstrap_room"], prefill.url, decode, attempt + 1)  # fmt: skip
        pool.begin(prefill.url, decode)
        try:
            if body.get("stream"):
                return await proxy.forward_stream(request, job)
            return await proxy.forward(job)
        except Retry as r:
            last = r.error
            logger.warning("attempt %d of %s failed, retrying on another pair: %s",
                           attempt + 1, rids, last.message)  # fmt: skip
            if on_retry is not None:
                on_retry(job, last)
            avoid = avoid | {last.server} if last.server else avoid
        finally:
            pool.end(prefill.url, decode)
    assert last is not None
    return error_response(last.message, last.status)
