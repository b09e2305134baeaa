"""Pieces shared by the completion and chat routes: running requests, logprob shaping, SSE."""

from __future__ import annotations

import asyncio
import inspect
import json
import math
from collections.abc import AsyncIterator
from typing import Any, Optional

Stream = tuple[dict[str, Any], AsyncIterator[dict[str, Any]]]  # (first output, the rest)


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def pd_fields(req: Any, n: int) -> dict[str, Any]:
    """Bootstrap fields for n prompts; one scalar room becomes room + i, as SGLang does."""
    room = req.bootstrap_room
    if n > 1 and isinstance(room, int):
        room = [room + i for i in range(n)]
    return {
        "bootstrap_host": req.bootstrap_host,
        "bootstrap_port": req.bootstrap_port,
        "bootstrap_room": room,
    }


async def _start(tm: Any, obj: Any, request: Any) -> AsyncIterator[dict[str, Any]]:
    gen = tm.generate_request(obj, request)
    if inspect.isawaitable(gen):
        gen = await gen
    return gen


async def _first(gen: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    try:
        return await gen.__anext__()
    except StopAsyncIteration:
        raise RuntimeError("the engine returned no output") from None


async def close_iter(*iters: Any) -> None:
    """aclose() async generators (a break out of ``async for`` does not close them)."""
    for g in iters:
        aclose = getattr(g, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


async def run_to_end(tm: Any, objs: list[Any], request: Any) -> list[dict[str, Any]]:
    """Non-stream: the final output of each request (a batch runs concurrently)."""

    async def one(obj: Any) -> dict[str, Any]:
        gen = await _start(tm, obj, request)
        last = None
        async for out in gen:
            last = out
        if last is None:
            raise RuntimeError("the engine returned no output")
        return last

    tasks = [asyncio.create_task(one(o)) for o in objs]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # one failed or the caller was cancelled: stop the others
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_streams(tm: Any, objs: list[Any], request: Any) -> list[Stream]:
    """Start every request and wait for its first output, so a bad request is still a 400."""
    gens: list[Any] = []
    try:
        for obj in objs:
            gens.append(await _start(tm, obj, request))
        firsts = await asyncio.gather(*(_first(g) for g in gens))
    except BaseException:
        await close_iter(*gens)
        raise
    return list(zip(firsts, gens))


async def first_abort(streams: list[Stream]) -> Optional[tuple[str, int]]:
    """(message, status) if a stream aborted in its first output; then all streams are closed."""
    for first, _ in streams:
        fr = first["meta_info"].get("finish_reason")
        if isinstance(fr, dict) and fr.get("type") == "abort":
            await close_iter(*(g for _, g in streams))
            return str(fr.get("message") or "request aborted"), int(fr.get("status_code") or 500)
    return None


async def merge_streams(streams: list[Stream]) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """(index, output) from all streams as they come; closes them all when done or cancelled."""
    gens = [g for _, g in streams]
    if len(streams) == 1:
        first, gen = streams[0]
        try:
            yield 0, first
            async for out in gen:
                yield 0, out
        finally:
            await close_iter(*gens)
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, first: dict[str, Any], gen: AsyncIterator[dict[str, Any]]) -> None:
        try:
            await queue.put((i, first))
            async for out in gen:
                await queue.put((i, out))
            await queue.put((i, None))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            await queue.put((i, e))

    tasks = [asyncio.create_task(pump(i, f, g)) for i, (f, g) in enumerate(streams)]
    try:
        live = len(tasks)
        while live:
            i, item = await queue.get()
            if item is None:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_iter(*gens)


# ---- logprobs ------------------------------------------------------------------------------
def _finite(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    return max(float(x), -9999.0) if not math.isnan(x) else -9999.0


def _entry(tokenizer: Any, e: Any) -> tuple[Optional[float], str]:
    """(logprob, token_id, text|None) -> (logprob, text)."""
    lp, tid = e[0], e[1]
    text = e[2] if len(e) > 2 else None
    if text is None:
        text = tokenizer.decode([tid]) if tokenizer is not None else str(tid)
    return _finite(lp), text


def chat_logprobs(
    tokenizer: Any, tokens: list[Any], tops: list[Any], top_n: int
) -> list[dict[str, Any]]:
    """OpenAI chat logprobs["content"] entries for the given output tokens."""
    content = []
    for i, e in enumerate(tokens):
        lp, text = _entry(tokenizer, e)
        top_list = tops[i] if i < len(tops) and tops[i] else []
        top = []
        for t in top_list[:top_n]:
            tlp, ttext = _entry(tokenizer, t)
            top.append({"token": ttext, "logprob": tlp, "bytes": list(ttext.encode("utf-8"))})
        content.append(
            {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8")), "top_logprobs": top}
        )
    return content


def completion_logprobs(
    tokenizer: Any, tokens: list[Any], tops: list[Any], top_n: int, offset: int
) -> dict[str, Any]:
    """OpenAI legacy completion logprobs; text offsets count from ``offset``, each token adding
    the length of its own text (see :func:`next_offset`)."""
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    out: dict[str, Any] = {k: [] for k in keys}
    for i, e in enumerate(tokens):
        lp, text = _entry(tokenizer, e)
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["text_offset"].append(offset)
        offset += len(text)
        top_list = tops[i] if i < len(tops) and tops[i] else []
        top: dict[str, Optional[float]] = {}
        for t in top_list[:top_n]:
            tlp, ttext = _entry(tokenizer, t)
            top.setdefault(ttext, tlp)
        out["top_logprobs"].append(top if top_n else None)
    if not top_n:
        out["top_logprobs"] = None
    return out


def text_delta(text: str, sent: int) -> str:
    """The new part of a cumulative ``text`` after ``sent`` characters went out.

    The tokenizer manager only ever appends to ``text`` (whole characters, nothing that a stop
    string will cut), so the streamed deltas add up to the non-streamed text.
    """
    if len(text) < sent:
        raise RuntimeError(f"streamed text shrank from {sent} to {len(text)} characters")
    return text[sent:]


def new_logprobs(meta: dict[str, Any], sent: int) -> tuple[list[Any], list[Any]]:
    """Output logprobs after the first ``sent`` (they are cumulative, like ``text``)."""
    toks = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    return list(toks[sent:]), list(tops[sent:])


def next_offset(logprobs: dict[str, Any]) -> int:
    """The text offset after the tokens of a :func:`completion_logprobs` result."""
    return logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
