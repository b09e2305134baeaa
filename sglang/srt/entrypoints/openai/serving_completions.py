"""POST /v1/completions: OpenAI's legacy completion API on top of the tokenizer manager."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Optional

from fastapi.responses import JSONResponse, Response, StreamingResponse

from sglang.srt.entrypoints.openai.protocol import (
    CompletionRequest,
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
    close_iter,
    first_abort,
    completion_logprobs,
    merge_streams,
    new_logprobs,
    next_offset,
    open_streams,
    pd_fields,
    run_to_end,
    sse,
    text_delta,
)
from sglang.srt.managers.io_struct import BadRequestError, GenerateReqInput


def build_completion_inputs(req: CompletionRequest) -> list[GenerateReqInput]:
    """One normalized GenerateReqInput per prompt."""
    if req.echo:
        raise BadRequestError("echo=true is not supported")
    if req.suffix:
        raise BadRequestError("suffix is not supported")
    prompt = req.prompt
    if prompt == "" or prompt == []:
        raise BadRequestError("'prompt' is empty: it needs at least one token")
    is_text = isinstance(prompt, str) or isinstance(prompt[0], str)
    n = len(prompt) if isinstance(prompt, list) and not isinstance(prompt[0], int) else 1
    obj = GenerateReqInput(
        text=prompt if is_text else None,
        input_ids=None if is_text else prompt,
        sampling_params=req.sampling_dict(16 if req.max_tokens is None else req.max_tokens),
        rid=req.rid,
        return_logprob=req.logprobs is not None,
        top_logprobs_num=req.logprobs or 0,
        return_text_in_logprobs=True,
        stream=req.stream,
        **pd_fields(req, n),
    )
    return obj.normalize()


def _choice(
    index: int, out: dict[str, Any], req: CompletionRequest, tokenizer: Any
) -> dict[str, Any]:
    meta = out["meta_info"]
    reason, matched = finish_reason(meta)
    logprobs = None
    if req.logprobs is not None:
        toks, tops = new_logprobs(meta, 0)
        logprobs = completion_logprobs(tokenizer, toks, tops, req.logprobs, 0)
    return {
        "index": index,
        "text": out["text"],
        "logprobs": logprobs,
        "finish_reason": reason,
        "matched_stop": matched,
    }


def completion_response(
    req: CompletionRequest, outs: list[dict[str, Any]], tokenizer: Any, model: str
) -> dict[str, Any]:
    """The non-stream response body for the final outputs of each prompt."""
    metas = [o["meta_info"] for o in outs]
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [_choice(i, o, req, tokenizer) for i, o in enumerate(outs)],
        "usage": usage(
            sum(m.get("prompt_tokens", 0) for m in metas),
            sum(m.get("completion_tokens", 0) for m in metas),
            sum(m.get("cached_tokens", 0) or 0 for m in metas),
        ),
    }


async def stream_completion(
    req: CompletionRequest,
    outputs: AsyncIterator[tuple[int, dict[str, Any]]],
    tokenizer: Any,
    model: str,
) -> AsyncIterator[str]:
    """SSE chunks from (index, cumulative output) pairs."""
    cid, created = new_id("cmpl"), now()
    sent_text: dict[int, int] = {}
    sent_lp: dict[int, int] = {}
    # Logprob text offsets run over the tokens' own texts, as in the non-stream response (a
    # token's text and the released text differ while a character is split across tokens).
    lp_offset: dict[int, int] = {}
    last: dict[int, dict[str, Any]] = {}

    def chunk(index: int, text: str, logprobs: Any, reason: Optional[str], matched: Any) -> str:
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}
        if reason is not None:
            choice["matched_stop"] = matched
        return sse(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
            }
        )

    try:
        async for i, out in outputs:
            meta = out["meta_info"]
            last[i] = meta
            err = abort_error(meta)
            if err is not None:
                yield sse(error_body(*err))
                break
            delta = text_delta(out["text"], sent_text.get(i, 0))
            sent_text[i] = sent_text.get(i, 0) + len(delta)
            logprobs = None
            if req.logprobs is not None:
                toks, tops = new_logprobs(meta, sent_lp.get(i, 0))
                sent_lp[i] = sent_lp.get(i, 0) + len(toks)
                if toks:
                    logprobs = completion_logprobs(
                        tokenizer, toks, tops, req.logprobs, lp_offset.get(i, 0)
                    )
                    lp_offset[i] = next_offset(logprobs)
            if delta or logprobs:
                yield chunk(i, delta, logprobs, None, None)
            reason, matched = finish_reason(meta)
            if reason is not None:
                yield chunk(i, "", None, reason, matched)
        else:
            if req.include_usage:
                metas = list(last.values())
                yield sse(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage(
                            sum(m.get("prompt_tokens", 0) for m in metas),
                            sum(m.get("completion_tokens", 0) for m in metas),
                            sum(m.get("cached_tokens", 0) or 0 for m in metas),
                        ),
                    }
                )
    except BadRequestError as e:
        yield sse(error_body(str(e), 400))
    except Exception as e:  # noqa: BLE001 - reported to the client as an error chunk
        yield sse(error_body(f"internal error: {e}", 500))
    finally:
        await close_iter(outputs)
    yield SSE_DONE


async def create_completion(tm: Any, raw: bytes, request: Any) -> Response:
    req = parse_request(raw, CompletionRequest)
    check_model(req.model, tm.served_model_name, tm.model_path)
    model = req.model or tm.served_model_name
    objs = build_completion_inputs(req)
    if req.stream:
        streams = await open_streams(tm, objs, request)
        aborted = await first_abort(streams)
        if aborted is not None:
            return error_response(*aborted)
        return StreamingResponse(
            stream_completion(req, merge_streams(streams), tm.tokenizer, model),
            media_type="text/event-stream",
        )
    outs = await run_to_end(tm, objs, request)
    for out in outs:
        err = abort_error(out["meta_info"])
        if err is not None:
            return error_response(*err)
    return JSONResponse(completion_response(req, outs, tm.tokenizer, model))
