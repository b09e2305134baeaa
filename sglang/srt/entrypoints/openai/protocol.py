"""Request models of the OpenAI-compatible API, and the error body it answers with.

Validation is strict (a string is not an integer) so that wrong types give a 400 with a message
instead of being coerced. Unknown fields are ignored, as OpenAI clients send extras.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sglang.srt.base_types import is_abort
from sglang.srt.entrypoints.json_body import parse_json_body
from sglang.srt.managers.io_struct import BadRequestError

_STATUS_TYPES = {
    400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError",
    429: "RateLimitError", 503: "ServiceUnavailableError",
}
# --enable-cache-report: usage carries prompt_tokens_details.cached_tokens (set by create_app)
CACHE_REPORT = {"enabled": False}


def error_body(message: str, status_code: int = 400) -> dict[str, Any]:
    err_type = _STATUS_TYPES.get(status_code, "InternalServerError")
    return {
        "object": "error",
        "error": {"message": message, "type": err_type, "param": None, "code": status_code},
    }


def error_response(message: str, status_code: int = 400) -> JSONResponse:
    return JSONResponse(error_body(message, status_code), status_code=status_code)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


Stop = Union[str, list[str], None]
IntOrList = Union[int, list[int], None]


class _SamplingFields(_Strict):
    """Fields shared by both routes (SGLang's extensions included)."""

    model: Optional[str] = None
    temperature: Optional[float] = Field(None, ge=0.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    top_k: Optional[int] = None
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    stop: Stop = None
    stop_token_ids: Optional[list[int]] = None
    seed: Optional[int] = None
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    ignore_eos: bool = False
    min_tokens: Optional[int] = Field(None, ge=0)
    skip_special_tokens: Optional[bool] = None
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0)
    user: Optional[str] = None
    rid: Union[str, list[str], None] = None
    # PD disaggregation, injected by the load balancer
    bootstrap_host: Union[str, list[str], None] = None
    bootstrap_port: IntOrList = None
    bootstrap_room: IntOrList = None

    def sampling_dict(self, max_new_tokens: Optional[int]) -> dict[str, Any]:
        """SGLang sampling params; only the values that were given, so defaults stay SGLang's."""
        values = {
            "max_new_tokens": max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "seed": self.seed,
            "ignore_eos": self.ignore_eos or None,
            "min_new_tokens": self.min_tokens,
            "skip_special_tokens": self.skip_special_tokens,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
        }
        return {k: v for k, v in values.items() if v is not None}

    def check_common(self) -> None:
        if self.n != 1:
            raise BadRequestError("n > 1 is not supported; send separate requests instead")
        if self.stream_options is not None and not self.stream:
            raise BadRequestError("stream_options is only allowed when stream is true")

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: Optional[int] = Field(16, ge=0)
    logprobs: Optional[int] = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: Optional[str] = None


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def to_template(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        msg: dict[str, Any] = {"role": self.role, "content": content or ""}
        if self.name is not None:
            msg["name"] = self.name
        return msg


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=0)
    max_completion_tokens: Optional[int] = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    tools: Optional[list[Any]] = None
    response_format: Optional[dict[str, Any]] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


_HINTS = {
    "prompt": "must be a string, a list of strings, a list of token ids or a list of such lists",
    "messages": "must be a non-empty list of {role, content} objects with string content",
    "stop": "must be a string or a list of strings",
}


def format_validation_error(err: ValidationError) -> str:
    """One readable line per bad field: 'max_tokens: Input should be ...'."""
    by_field: dict[str, list[dict[str, Any]]] = {}
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "body"
        by_field.setdefault(field, []).append(e)
    parts = []
    for field, errs in by_field.items():
        if errs[0]["type"] == "missing":
            parts.append(f"'{field}' is required")
        elif len(errs) == 1:
            loc = ".".join(str(x) for x in errs[0]["loc"])
            parts.append(f"'{loc}': {errs[0]['msg']}")
        else:
            parts.append(f"'{field}' {_HINTS.get(field, 'has an invalid value or type')}")
    return "; ".join(parts)


def parse_request(raw: bytes, model_cls: type[_Strict]) -> Any:
    """JSON bytes -> validated request; raises BadRequestError with a readable message."""
    body = parse_json_body(raw, "invalid JSON body")
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    try:
        req = model_cls.model_validate(body)
    except ValidationError as e:
        raise BadRequestError(format_validation_error(e)) from None
    req.check_common()
    return req


def check_model(requested: Optional[str], served: str, model_path: str) -> None:
    if requested in (None, "", served, model_path):
        return
    raise BadRequestError(f"The model '{requested}' does not exist; this server serves '{served}'")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if CACHE_REPORT["enabled"]:
        out["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return out


def finish_reason(meta: dict[str, Any]) -> tuple[Optional[str], Any]:
    """SGLang finish_reason dict -> (OpenAI finish_reason, matched_stop)."""
    fr = meta.get("finish_reason")
    if fr is None:
        return None, None
    kind = fr.get("type") if isinstance(fr, dict) else str(fr)
    if kind == "length":
        return "length", None
    if kind == "abort":
        return "abort", None
    return "stop", fr.get("matched") if isinstance(fr, dict) else None


def abort_error(meta: dict[str, Any]) -> Optional[tuple[str, int]]:
    """(message, status) when the output finished as an abort, else None."""
    fr = meta.get("finish_reason")
    if is_abort(fr):
        return str(fr.get("message") or "request aborted"), int(fr.get("status_code") or 500)
    return None
