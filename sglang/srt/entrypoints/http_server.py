"""FastAPI app: SGLang's native /generate, plus the admin and OpenAI routes, behind the gate.

The admin routes live in admin_routes.py, the OpenAI ones in openai/, the --api-key check and
the start-up state in server_state.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response, StreamingResponse

from sglang.srt.base_types import is_abort
from sglang.srt.managers.io_struct import (
    BadRequestError,
    GenerateReqInput,
    TokenizedGenerateReqInput,
)
from sglang.srt.entrypoints.json_body import parse_json_body
from sglang.srt.entrypoints.server_state import GateMiddleware, LateTM, ServerState
from sglang.srt.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)

try:  # orjson is optional
    import orjson  # noqa: F401

    _JSON = ORJSONResponse
except ImportError:  # pragma: no cover
    _JSON = JSONResponse
JSON = _JSON


def error_response(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "BadRequestError" if status == 400 else
                   "ServerError", "code": status}},
        status_code=status,
    )


async def read_json(request: Request) -> Any:
    return parse_json_body(await request.body())


def _abort_status(out: dict[str, Any]) -> int | None:
    reason = out["meta_info"].get("finish_reason") or {}
    return reason.get("status_code", 500) if is_abort(reason) else None


def create_app(tm_or_state: "TokenizerManager | ServerState") -> FastAPI:
    """The app for a ready TokenizerManager, or for a :class:`ServerState` whose engine is
    still starting (its routes answer 503 until ``state.set_engine`` is called)."""
    if isinstance(tm_or_state, ServerState):
        state = tm_or_state
    else:
        state = ServerState(tm_or_state.server_args, tm_or_state)
    tm: Any = LateTM(state)
    app = FastAPI()
    app.state.tm = tm
    app.state.server_state = state
    app.add_middleware(GateMiddleware, state=state)
    from sglang.srt.entrypoints.openai.protocol import CACHE_REPORT

    CACHE_REPORT["enabled"] = state.args.enable_cache_report

    @app.exception_handler(BadRequestError)
    async def _bad_request(request: Request, exc: BadRequestError):  # noqa: ARG001
        return error_response(str(exc), 400)

    from sglang.srt.entrypoints.admin_routes import register_admin_routes

    register_admin_routes(app, tm, state)
    from sglang.srt.metrics.server_metrics import register_metrics_route

    register_metrics_route(app, state)  # GET /metrics with --enable-metrics

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        obj = GenerateReqInput.from_json(await read_json(request))
        items = obj.normalize()
        # Tokenized here, once, so that a bad request is a 400 before a stream starts.
        jobs = [(it, tm.validator.validate(it)) for it in items]
        if obj.stream:
            started = None
            if not obj.is_batch:  # wait for the first output, so a refusal is an HTTP error
                agen = tm.generate_request(jobs[0][0], request, tokenized=jobs[0][1])
                first = await agen.__anext__()
                status = _abort_status(first)
                if status is not None:
                    await agen.aclose()
                    return error_response(first["meta_info"]["finish_reason"]["message"], status)
                started = [(first, agen)]
            return StreamingResponse(
                _stream(tm, jobs, request, obj.is_batch, started), media_type="text/event-stream"
            )
        if not obj.is_batch:
            out = await _collect(tm, jobs[0], request)
            status = _abort_status(out)
            if status is not None:
                return error_response(out["meta_info"]["finish_reason"]["message"], status)
            return _JSON(out)
        outs = await asyncio.gather(*[_collect(tm, job, request) for job in jobs])
        return _JSON(list(outs))

    try:
        from sglang.srt.entrypoints.openai.routes import register_openai_routes

        register_openai_routes(app, tm)
    except ImportError as e:  # pragma: no cover - the OpenAI layer ships with the package
        logger.warning("OpenAI routes unavailable: %s", e)
    return app


Job = tuple[GenerateReqInput, TokenizedGenerateReqInput]  # a request and its validated form


async def _collect(tm: TokenizerManager, job: Job, request: Request) -> dict:
    out = None
    async for out in tm.generate_request(job[0], request, tokenized=job[1]):
        pass
    assert out is not None
    return out


async def _started(first: dict, agen: Any) -> AsyncIterator[dict]:
    yield first
    async for out in agen:
        yield out


async def _stream(
    tm: TokenizerManager, jobs: list[Job], request: Request, batch: bool,
    started: Any = None,
) -> AsyncIterator[bytes]:
    """SGLang's format: each chunk holds the cumulative text, which only grows by appending.

    ``started``: (first output, generator) of a single request already under way."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, job: Job) -> None:
        gen = (_started(*started[i]) if started
               else tm.generate_request(job[0], request, tokenized=job[1]))
        try:
            async for out in gen:
                if batch:
                    out["index"] = i
                await queue.put(out)
        except BadRequestError as e:
            await queue.put({"error": {"message": str(e), "code": 400}})
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(i, job)) for i, job in enumerate(jobs)]
    try:
        done = 0
        while done < len(tasks):
            out = await queue.get()
            if out is None:
                done += 1
                continue
            yield b"data: " + json.dumps(out).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    finally:
        for t in tasks:
            t.cancel()
