"""End-to-end checks of the OpenAI-compatible API of a running server (or mini_lb).

Each ``check_*`` takes the server's base URL without ``/v1`` ("http://127.0.0.1:30000"), talks
to it with the official ``openai`` client (or aiohttp / requests for raw bodies) and asserts real
properties. They return what they saw, so a test can assert more.

Greedy comparisons (stream vs non-stream, stop strings) assume a deterministic engine; a model
with random weights has nearly flat logits and may break them (see measured-here.md), so use a
trained or peaked model, or pass ``compare=False``. Pass ``ignore_eos=True`` for a model that may
stop at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import aiohttp
import openai
import requests

CHAT = [{"role": "user", "content": "Count from one to twenty: one, two, three,"}]
PROMPT = "The numbers from one to twenty are one, two, three,"


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY", max_retries=0, timeout=300)


def model_id(base_url: str) -> str:
    return client(base_url).models.list().data[0].id


def _extra(ignore_eos: bool) -> dict[str, Any]:
    return {"ignore_eos": True} if ignore_eos else {}


def _check_usage(u: Any, max_tokens: Optional[int] = None) -> None:
    assert u.prompt_tokens > 0, u
    assert u.completion_tokens >= 0, u
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens, u
    if max_tokens is not None:
        assert u.completion_tokens <= max_tokens, u


def check_models(base_url: str) -> str:
    models = client(base_url).models.list().data
    assert len(models) >= 1 and models[0].id, models
    return models[0].id


def check_completion(base_url: str, max_tokens: int = 8) -> Any:
    """ignore_eos + max_tokens gives exactly max_tokens tokens; a 2-prompt batch gives 2 choices."""
    c, model = client(base_url), model_id(base_url)
    r = c.completions.create(
        model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, extra_body=_extra(True)
    )
    assert r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == model, r
    assert r.created > 0 and len(r.choices) == 1, r
    ch = r.choices[0]
    assert isinstance(ch.text, str) and ch.text, r
    assert ch.finish_reason == "length", r
    assert r.usage.completion_tokens == max_tokens, r.usage
    _check_usage(r.usage, max_tokens)
    batch = c.completions.create(model=model, prompt=[PROMPT, "Hello, my name is"], max_tokens=4)
    assert sorted(ch.index for ch in batch.choices) == [0, 1], batch
    assert all(ch.finish_reason in ("stop", "length") for ch in batch.choices), batch
    _check_usage(batch.usage, 8)
    return r


def check_completion_stream(base_url: str, max_tokens: int = 16, compare: bool = True) -> str:
    """Streamed text deltas concatenate to the non-stream text (greedy); usage chunk matches."""
    c, model = client(base_url), model_id(base_url)
    args = dict(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0)
    full = c.completions.create(**args, extra_body=_extra(True))
    chunks = list(
        c.completions.create(
            **args, stream=True, stream_options={"include_usage": True}, extra_body=_extra(True)
        )
    )
    assert chunks, "no chunks"
    text, reasons, usage = "", [], None
    for ch in chunks:
        assert ch.id.startswith("cmpl-") and ch.id == chunks[0].id, ch
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            text += choice.text
            if choice.finish_reason is not None:
                reasons.append(choice.finish_reason)
    assert reasons == ["length"], reasons
    assert text, "streamed no text"
    assert usage is not None and chunks[-1].choices == [], chunks[-1]
    assert usage.completion_tokens == max_tokens, usage
    _check_usage(usage, max_tokens)
    if compare:
        assert text == full.choices[0].text, (text, full.choices[0].text)
        assert usage.prompt_tokens == full.usage.prompt_tokens, (usage, full.usage)
    return text


def check_chat(base_url: str, max_tokens: int = 32, ignore_eos: bool = False) -> Any:
    c, model = client(base_url), model_id(base_url)
    r = c.chat.completions.create(
        model=model, messages=CHAT, max_tokens=max_tokens, temperature=0,
        extra_body=_extra(ignore_eos),
    )  # fmt: skip
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion", r
    assert r.model == model and r.created > 0 and len(r.choices) == 1, r
    ch = r.choices[0]
    assert ch.message.role == "assistant", ch
    assert isinstance(ch.message.content, str) and ch.message.content.strip(), r
    assert ch.finish_reason in ("stop", "length"), ch
    if ch.finish_reason == "length":
        assert r.usage.completion_tokens == max_tokens, r.usage
    _check_usage(r.usage, max_tokens)
    # max_completion_tokens is the newer name of max_tokens
    r2 = c.chat.completions.create(
        model=model, messages=CHAT, max_completion_tokens=3, extra_body=_extra(True)
    )
    assert r2.usage.completion_tokens == 3 and r2.choices[0].finish_reason == "length", r2
    return r


def check_chat_stream(
    base_url: str, max_tokens: int = 24, ignore_eos: bool = False, compare: bool = True
) -> str:
    """Role delta first, content deltas, one finish chunk, a usage chunk; text == non-stream."""
    c, model = client(base_url), model_id(base_url)
    args = dict(model=model, messages=CHAT, max_tokens=max_tokens, temperature=0)
    full = c.chat.completions.create(**args, extra_body=_extra(ignore_eos))
    chunks = list(
        c.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True},
            extra_body=_extra(ignore_eos),
        )
    )  # fmt: skip
    assert len(chunks) >= 3, chunks
    assert all(ch.id == chunks[0].id and ch.id.startswith("chatcmpl-") for ch in chunks), chunks
    assert all(ch.object == "chat.completion.chunk" for ch in chunks), chunks
    assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
    text, reasons = "", []
    for ch in chunks[:-1]:
        assert len(ch.choices) == 1, ch
        text += ch.choices[0].delta.content or ""
        if ch.choices[0].finish_reason is not None:
            reasons.append(ch.choices[0].finish_reason)
    assert len(reasons) == 1 and reasons[0] in ("stop", "length"), reasons
    assert chunks[-2].choices[0].finish_reason is not None, "finish chunk is not the last choice"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, chunks[-1]
    _check_usage(chunks[-1].usage, max_tokens)
    assert text.strip(), "streamed no content"
    if compare:
        assert text == full.choices[0].message.content, (text, full.choices[0].message.content)
        assert reasons[0] == full.choices[0].finish_reason, (reasons, full)
        assert chunks[-1].usage.model_dump() == full.usage.model_dump(), (chunks[-1].usage, full)
    return text


def check_logprobs(base_url: str, top: int = 3, max_tokens: int = 6) -> Any:
    """Chat logprobs: one entry per completion token, top_logprobs of length ``top``, greedy token
    is the top-1; completion logprobs likewise in the legacy format."""
    c, model = client(base_url), model_id(base_url)
    r = c.chat.completions.create(
        model=model, messages=CHAT, max_tokens=max_tokens, temperature=0, logprobs=True,
        top_logprobs=top, extra_body=_extra(True),
    )  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == max_tokens, (len(content), r.usage)
    for e in content:
        assert isinstance(e.token, str) and e.logprob <= 1e-4, e
        assert e.bytes == list(e.token.encode("utf-8")), e
        assert len(e.top_logprobs) == top, e
        assert abs(e.top_logprobs[0].logprob - e.logprob) < 1e-2, e  # greedy picks the top-1
        lps = [t.logprob for t in e.top_logprobs]
        assert lps == sorted(lps, reverse=True), lps
    r2 = c.completions.create(
        model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=2,
        extra_body=_extra(True),
    )  # fmt: skip
    lp = r2.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == max_tokens, lp
    assert all(x <= 1e-4 for x in lp.token_logprobs), lp
    assert all(1 <= len(t) <= 2 for t in lp.top_logprobs), lp
    return r


def check_stop(base_url: str) -> None:
    """A stop string taken from the greedy output cuts the output just before it."""
    c, model = client(base_url), model_id(base_url)
    args = dict(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    full = c.completions.create(**args, extra_body=_extra(True)).choices[0].text
    words = [w for w in full.split() if w]
    assert len(words) >= 3, f"output too short to pick a stop word: {full!r}"
    stop = words[len(words) // 2]
    r = c.completions.create(**args, stop=[stop], extra_body=_extra(True))
    ch = r.choices[0]
    assert ch.finish_reason == "stop", (stop, full, ch)
    assert ch.text == full[: full.index(stop)], (stop, full, ch.text)


def check_bad_requests(base_url: str) -> None:
    """Bad input gets HTTP 400 with OpenAI's error shape and a message."""
    model = model_id(base_url)
    chat, comp = f"{base_url}/v1/chat/completions", f"{base_url}/v1/completions"
    msgs = [{"role": "user", "content": "hi"}]
    cases: list[tuple[str, Any, Optional[str]]] = [
        (chat, b'{"model": "x", "messages": [', None),
        (comp, b"not json", None),
        (chat, {"model": model}, "messages"),
        (comp, {"model": model}, "prompt"),
        (chat, {"model": model, "messages": []}, "messages"),
        (chat, {"model": model, "messages": "hi"}, "messages"),
        (comp, {"model": model, "prompt": ""}, "prompt"),
        (comp, {"model": model, "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        (comp, {"model": model, "prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
        (chat, {"model": model, "messages": msgs, "temperature": -1}, "temperature"),
        (chat, {"model": model, "messages": msgs, "top_p": 2}, "top_p"),
        (chat, {"model": model, "messages": msgs, "n": 2}, None),
        (chat, {"model": "no-such-model", "messages": msgs}, model),
    ]
    info = requests.get(f"{base_url}/v1/models", timeout=30).json()["data"][0]
    if info.get("max_model_len"):
        too_long = {"model": model, "prompt": [1] * (info["max_model_len"] + 8), "max_tokens": 4}
        cases.append((comp, too_long, None))
    for url, body, needle in cases:
        kw = {"data": body} if isinstance(body, bytes) else {"json": body}
        resp = requests.post(url, timeout=60, headers={"Content-Type": "application/json"}, **kw)
        assert resp.status_code == 400, (url, body if isinstance(body, bytes) else "", resp.text)
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"], resp.text
        if needle is not None:
            assert needle in err["message"], (needle, err["message"])
    try:
        client(base_url).chat.completions.create(model="no-such-model", messages=msgs)
    except openai.BadRequestError as e:
        assert e.status_code == 400
    else:
        raise AssertionError("a wrong model name was accepted")


def check_concurrent(base_url: str, n: int = 8, max_tokens: int = 8) -> list[dict[str, Any]]:
    """n chat requests at once (half streamed) all succeed."""
    model = model_id(base_url)

    async def one(session: aiohttp.ClientSession, i: int) -> dict[str, Any]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"Say the number {i}."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
        }
        url = f"{base_url}/v1/chat/completions"
        if i % 2:
            body["stream"] = True
            async with session.post(url, json=body) as r:
                assert r.status == 200, await r.text()
                lines = [ln async for ln in r.content if ln.strip()]
            assert lines[-1].strip() == b"data: [DONE]", lines[-3:]
            return {"stream_lines": len(lines)}
        async with session.post(url, json=body) as r:
            assert r.status == 200, await r.text()
            out = await r.json()
        assert out["usage"]["completion_tokens"] == max_tokens, out
        return out

    async def main() -> list[dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            return list(await asyncio.gather(*(one(s, i) for i in range(n))))

    return asyncio.run(main())


def run_all(base_url: str, compare: bool = True, ignore_eos: bool = False) -> None:
    check_models(base_url)
    check_completion(base_url)
    check_completion_stream(base_url, compare=compare)
    check_chat(base_url, ignore_eos=ignore_eos)
    check_chat_stream(base_url, ignore_eos=ignore_eos, compare=compare)
    check_logprobs(base_url)
    if compare:
        check_stop(base_url)
    check_bad_requests(base_url)
    check_concurrent(base_url)
