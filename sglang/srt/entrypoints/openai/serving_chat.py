"""POST /v1/chat/completions: messages -> chat template -> token ids -> the tokenizer manager."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse

from sglang.srt.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    abort_error,
    check_model,
    error_body,
    error_response,
    finish_reason,
    new_id,
    now,
    parse_request,
    usage,
)
from sglang.srt.entrypoints.openai.serving_base import (
    SSE_DONE,
    chat_logprobs,
    close_iter,
    first_abort,
    merge_streams,
    new_logprobs,
    open_streams,
    pd_fields,
    run_to_end,
    sse,
    text_delta,
)
from sglang.srt.managers.io_struct import BadRequestError, GenerateReqInput


def apply_template(tokenizer: Any, req: ChatCompletionRequest) -> list[int]:
    """Token ids of the conversation with the generation prompt appended."""
    messages = [m.to_template() for m in req.messages]
    try:
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, **(req.chat_template_kwargs or {})
        )
    except Exception as e:  # jinja2 TemplateError, "roles must alternate", ...
        raise BadRequestError(f"cannot apply the chat template: {e}") from None
    if isinstance(ids, Mapping) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    ids = list(ids)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(t) for t in ids]


def build_chat_input(req: ChatCompletionRequest, tokenizer: Any, context_length: int) -> Any:
    """One normalized GenerateReqInput for a chat request."""
    if req.tools:
        raise BadRequestError("tools are not supported")
    if req.response_format and req.response_format.get("type", "text") != "text":
        raise BadRequestError("response_format other than {'type': 'text'} is not supported")
    if req.top_logprobs and not req.logprobs:
        raise BadRequestError("top_logprobs requires logprobs=true")
    ids = apply_template(tokenizer, req)
    if not ids:
        raise BadRequestError("the chat template produced an empty prompt")
    max_new = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_new is None:  # as much as the context allows (prompt + output < context, as SGLang)
        max_new = context_length - len(ids) - 1
        if max_new < 1:
            raise BadRequestError(
                f"the prompt has {len(ids)} tokens, which fills the context length "
                f"{context_length}; shorten the messages"
            )
    obj = GenerateReqInput(
        input_ids=ids,
        sampling_params=req.sampling_dict(max_new),
        rid=req.rid,
        return_logprob=req.logprobs,
        top_logprobs_num=(req.top_logprobs or 0) if req.logprobs else 0,
        return_text_in_logprobs=True,
        stream=req.stream,
        **pd_fields(req, 1),
    )
    return obj.normalize()[0]


def chat_response(
    req: ChatCompletionRequest, out: dict[str, Any], tokenizer: Any, model: str
) -> dict[str, Any]:
    meta = out["meta_info"]
    reason, matched = finish_reason(meta)
    logprobs = None
    if req.logprobs:
        toks, tops = new_logprobs(meta, 0)
        logprobs = {"content": chat_logprobs(tokenizer, toks, tops, req.top_logprobs or 0)}
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": out["text"]},
        "logprobs": logprobs,
        "finish_reason": reason,
        "matched_stop": matched,
    }
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [choice],
        "usage": usage(
            meta.get("prompt_tokens", 0),
            meta.get("completion_tokens", 0),
            meta.get("cached_tokens", 0) or 0,
        ),
    }


async def stream_chat(
    req: ChatCompletionRequest,
    outputs: AsyncIterator[tuple[int, dict[str, Any]]],
    tokenizer: Any,
    model: str,
) -> AsyncIterator[str]:
    """Role delta, content deltas, a finish chunk, an optional usage chunk, then [DONE]."""
    cid, created = new_id("chatcmpl"), now()

    def chunk(delta: dict[str, Any], logprobs: Any = None, reason: Optional[str] = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        return sse({**base, "choices": [choice]})

    sent_text = sent_lp = 0
    meta: dict[str, Any] = {}
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for _, out in outputs:
            meta = out["meta_info"]
            err = abort_error(meta)
            if err is not None:
                yield sse(error_body(*err))
                break
            delta = text_delta(out["text"], sent_text)
            sent_text += len(delta)
            logprobs = None
            if req.logprobs:
                toks, tops = new_logprobs(meta, sent_lp)
                sent_lp += len(toks)
                if toks:
                    content = chat_logprobs(tokenizer, toks, tops, req.top_logprobs or 0)
                    logprobs = {"content": content}
            if delta or logprobs:
                yield chunk({"content": delta}, logprobs)
            reason, _ = finish_reason(meta)
            if reason is not None:
                yield chunk({}, None, reason)
        else:
            if req.include_usage:
                u = usage(
                    meta.get("prompt_tokens", 0),
                    meta.get("completion_tokens", 0),
                    meta.get("cached_tokens", 0) or 0,
                )
                yield sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": u,
                    }
                )
    except BadRequestError as e:
        yield sse(error_body(str(e), 400))
    except Exception as e:  # noqa: BLE001 - reported to the client as an error chunk
        yield sse(error_body(f"internal error: {e}", 500))
    finally:
        await close_iter(outputs)
    yield SSE_DONE


async def create_chat_completion(tm: Any, raw: bytes, request: Any) -> Response:
    req = parse_request(raw, ChatCompletionRequest)
    check_model(req.model, tm.served_model_name, tm.model_path)
    model = req.model or tm.served_model_name
    obj = build_chat_input(req, tm.tokenizer, tm.context_length)
    if req.stream:
        streams = await open_streams(tm, [obj], request)
        aborted = await first_abort(streams)
        if aborted is not None:
            return error_response(*aborted)
        return StreamingResponse(
            stream_chat(req, merge_streams(streams), tm.tokenizer, model),
            media_type="text/event-stream",
        )
    (out,) = await run_to_end(tm, [obj], request)
    err = abort_error(out["meta_info"])
    if err is not None:
        return error_response(*err)
    return JSONResponse(chat_response(req, out, tm.tokenizer, model))
