"""FastAPI app: SGLang's native routes, the admin routes, and the OpenAI routes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response, StreamingResponse

from sglang.srt.managers.io_struct import (
    BadRequestError,
    GenerateReqInput,
    TokenizedGenerateReqInput,
)
from sglang.srt.managers.tokenizer_manager import TokenizerManager

logger = logging.getLogger(__name__)

try:  # orjson is optional
    import orjson  # noqa: F401

    _JSON = ORJSONResponse
except ImportError:  # pragma: no cover
    _JSON = JSONResponse


def error_response(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "BadRequestError" if status == 400 else
                   "ServerError", "code": status}},
        status_code=status,
    )


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"malformed JSON body: {e}") from None


def _abort_status(out: dict[str, Any]) -> int | None:
    reason = out["meta_info"].get("finish_reason") or {}
    return reason.get("status_code", 500) if reason.get("type") == "abort" else None


def create_app(tm: TokenizerManager) -> FastAPI:
    app = FastAPI()
    app.state.tm = tm

    @app.exception_handler(BadRequestError)
    async def _bad_request(request: Request, exc: BadRequestError):  # noqa: ARG001
        return error_response(str(exc), 400)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        if tm.server_args.disaggregation_mode != "null":
            # A PD server cannot run a request alone: check that the scheduler answers.
            await tm.rpc("get_info")
            return Response(status_code=200)
        obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1}).normalize()[0]
        async for _ in tm.generate_request(obj, None):
            pass
        return Response(status_code=200)

    @app.get("/get_model_info")
    async def get_model_info() -> Any:
        return tm.model_info()

    @app.get("/get_server_info")
    async def get_server_info() -> Any:
        return _JSON(await tm.get_server_info())

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        ok = await tm.flush_cache()
        return Response(
            "Cache flushed.\n" if ok else "Cache not flushed: requests are running.\n",
            status_code=200 if ok else 400,
        )

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await read_json(request)
        rid = body.get("rid") if isinstance(body, dict) else None
        if not isinstance(rid, str):
            raise BadRequestError("abort_request needs {'rid': str}")
        tm.abort_request(rid)
        return Response(status_code=200)

    @app.api_route("/generate", methods=["POST", "PUT"])
    async def generate(request: Request) -> Response:
        obj = GenerateReqInput.from_json(await read_json(request))
        items = obj.normalize()
        # Tokenized here, once, so that a bad request is a 400 before a stream starts.
        jobs = [(it, tm.validate(it)) for it in items]
        if obj.stream:
            return StreamingResponse(
                _stream(tm, jobs, request, obj.is_batch), media_type="text/event-stream"
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


async def _stream(
    tm: TokenizerManager, jobs: list[Job], request: Request, batch: bool
) -> AsyncIterator[bytes]:
    """SGLang's format: each chunk holds the cumulative text, which only grows by appending."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i: int, job: Job) -> None:
        try:
            async for out in tm.generate_request(job[0], request, tokenized=job[1]):
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
