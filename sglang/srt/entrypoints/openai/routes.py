"""The OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import fastapi
from fastapi.responses import JSONResponse, Response

from sglang.srt.entrypoints.openai.protocol import error_response, now
from sglang.srt.entrypoints.openai.serving_chat import create_chat_completion
from sglang.srt.entrypoints.openai.serving_completions import create_completion
from sglang.srt.managers.io_struct import BadRequestError

logger = logging.getLogger(__name__)

Handler = Callable[[Any, bytes, Any], Awaitable[Response]]


async def _serve(handler: Handler, tm: Any, request: fastapi.Request) -> Response:
    """Run a handler; BadRequestError -> 400, anything unexpected -> 500, both OpenAI-shaped."""
    try:
        raw = await request.body()
        return await handler(tm, raw, request)
    except BadRequestError as e:
        return error_response(str(e), 400)
    except Exception as e:  # noqa: BLE001 - the client gets the message, the log the trace
        logger.exception("openai route %s failed", request.url.path)
        return error_response(f"internal error: {type(e).__name__}: {e}", 500)


def models_body(tm: Any) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": tm.served_model_name,
                "object": "model",
                "created": now(),
                "owned_by": "sglang",
                "root": tm.model_path,
                "max_model_len": tm.context_length,
            }
        ],
    }


def register_openai_routes(app: fastapi.FastAPI, tm: Any) -> None:
    """Add POST /v1/completions, POST /v1/chat/completions and GET /v1/models to ``app``."""

    @app.post("/v1/completions")
    async def v1_completions(request: fastapi.Request) -> Response:
        return await _serve(create_completion, tm, request)

    @app.post("/v1/chat/completions")
    async def v1_chat_completions(request: fastapi.Request) -> Response:
        return await _serve(create_chat_completion, tm, request)

    @app.get("/v1/models")
    async def v1_models() -> Response:
        return JSONResponse(models_body(tm))
