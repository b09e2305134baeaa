"""Unit tests of the OpenAI layer: validation, request building, response shaping (no engine)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fake_tm import FakeTM  # noqa: E402

from sglang.srt.entrypoints.openai.protocol import (  # noqa: E402
    ChatCompletionRequest,
    CompletionRequest,
    check_model,
    parse_request,
)
from sglang.srt.entrypoints.openai.routes import _serve  # noqa: E402
from sglang.srt.entrypoints.openai.serving_chat import (  # noqa: E402
    build_chat_input,
    create_chat_completion,
)
from sglang.srt.entrypoints.openai.serving_completions import (  # noqa: E402
    build_completion_inputs,
    create_completion,
)
from sglang.srt.managers.io_struct import BadRequestError  # noqa: E402

MSGS = [{"role": "user", "content": "hello world"}]


def chat_req(**kw: Any) -> ChatCompletionRequest:
    return parse_request(json.dumps({"messages": MSGS, **kw}).encode(), ChatCompletionRequest)


def comp_req(**kw: Any) -> CompletionRequest:
    return parse_request(json.dumps({"prompt": "hello", **kw}).encode(), CompletionRequest)


def bad(raw: bytes | dict, cls: type = ChatCompletionRequest) -> str:
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(BadRequestError) as e:
        req = parse_request(data, cls)
        if cls is CompletionRequest:
            build_completion_inputs(req)
        else:
            build_chat_input(req, FakeTM().tokenizer, 64)
    return str(e.value)


# ---- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body,needle",
    [
        (b'{"messages": [', "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        ({}, "'messages' is required"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role"),
        ({"messages": MSGS, "max_tokens": -1}, "max_tokens"),
        ({"messages": MSGS, "max_tokens": "5"}, "max_tokens"),
        ({"messages": MSGS, "temperature": -0.1}, "temperature"),
        ({"messages": MSGS, "top_p": 0}, "top_p"),
        ({"messages": MSGS, "stream": "yes"}, "stream"),
        ({"messages": MSGS, "n": 2}, "n > 1"),
        ({"messages": MSGS, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": MSGS, "top_logprobs": 2}, "logprobs"),
        ({"messages": MSGS, "top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"messages": MSGS, "tools": [{"type": "function"}]}, "tools"),
        ({"messages": MSGS, "top_k": 0}, "top_k"),
    ],
)
def test_chat_validation(body: Any, needle: str) -> None:
    assert needle in bad(body)


@pytest.mark.parametrize(
    "body,needle",
    [
        ({}, "'prompt' is required"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "hi", "logprobs": 21}, "logprobs"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "stop": 3}, "stop"),
        ({"prompt": "hi", "max_tokens": 1.5}, "max_tokens"),
        ({"prompt": [-1]}, "non-negative"),
    ],
)
def test_completion_validation(body: Any, needle: str) -> None:
    assert needle in bad(body, CompletionRequest)


def test_model_check() -> None:
    check_model(None, "tiny", "/m/tiny")
    check_model("tiny", "tiny", "/m/tiny")
    check_model("/m/tiny", "tiny", "/m/tiny")
    with pytest.raises(BadRequestError, match="'tiny'"):
        check_model("gpt-4", "tiny", "/m/tiny")


# ---- request building -----------------------------------------------------------------------
def test_completion_inputs_prompt_kinds() -> None:
    (one,) = build_completion_inputs(comp_req())
    assert one.text == "hello" and one.input_ids is None
    assert one.parsed_sampling_params.max_new_tokens == 16  # OpenAI's default
    two = build_completion_inputs(comp_req(prompt=["a", "b"]))
    assert [o.text for o in two] == ["a", "b"]
    assert len({o.rid for o in two}) == 2
    (ids,) = build_completion_inputs(comp_req(prompt=[5, 6, 7]))
    assert ids.input_ids == [5, 6, 7]
    lists = build_completion_inputs(comp_req(prompt=[[5], [6, 7]]))
    assert [o.input_ids for o in lists] == [[5], [6, 7]]


def test_completion_inputs_sampling_and_pd_fields() -> None:
    req = comp_req(
        max_tokens=7, temperature=0, top_p=0.5, top_k=3, min_p=0.1, stop="x", seed=4,
        ignore_eos=True, stop_token_ids=[9], logprobs=2, stream=True,
        bootstrap_host="10.0.0.1", bootstrap_port=8998, bootstrap_room=123,
    )  # fmt: skip
    (o,) = build_completion_inputs(req)
    sp = o.parsed_sampling_params
    assert (sp.max_new_tokens, sp.temperature, sp.top_p, sp.top_k, sp.min_p) == (7, 0, 0.5, 3, 0.1)
    assert sp.stop == ["x"] and sp.seed == 4 and sp.ignore_eos and sp.stop_token_ids == [9]
    assert o.return_logprob and o.top_logprobs_num == 2 and o.stream
    assert (o.bootstrap_host, o.bootstrap_port, o.bootstrap_room) == ("10.0.0.1", 8998, 123)
    batch = build_completion_inputs(comp_req(prompt=["a", "b"], bootstrap_room=10))
    assert [o.bootstrap_room for o in batch] == [10, 11]  # one room per prompt
    batch = build_completion_inputs(comp_req(prompt=["a", "b"], bootstrap_room=[3, 9]))
    assert [o.bootstrap_room for o in batch] == [3, 9]


def test_chat_input_uses_template() -> None:
    tm = FakeTM()
    o = build_chat_input(chat_req(max_tokens=5), tm.tokenizer, tm.context_length)
    expected = tm.tokenizer.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert o.input_ids == list(expected)
    assert tm.tokenizer.decode(o.input_ids) == "<|user|> hello world <|assistant|>"
    assert o.parsed_sampling_params.max_new_tokens == 5


def test_chat_input_options() -> None:
    tm = FakeTM()
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}]}]
    o = build_chat_input(
        chat_req(messages=parts, max_tokens=9, max_completion_tokens=4, logprobs=True,
                 top_logprobs=3, bootstrap_host="h", bootstrap_port=1, bootstrap_room=2),
        tm.tokenizer, 64,
    )  # fmt: skip
    assert tm.tokenizer.decode(o.input_ids) == "<|user|> hello <|assistant|>"
    assert o.parsed_sampling_params.max_new_tokens == 4  # max_completion_tokens wins
    assert o.return_logprob and o.top_logprobs_num == 3
    assert (o.bootstrap_host, o.bootstrap_port, o.bootstrap_room) == ("h", 1, 2)
    default = build_chat_input(chat_req(), tm.tokenizer, 64)
    assert default.parsed_sampling_params.max_new_tokens == 64 - len(default.input_ids) - 1
    (o,) = build_completion_inputs(comp_req(max_tokens=None))
    assert o.parsed_sampling_params.max_new_tokens == 16


def test_chat_input_too_long() -> None:
    long = [{"role": "user", "content": "hello " * 80}]
    with pytest.raises(BadRequestError, match="context length"):
        build_chat_input(chat_req(messages=long), FakeTM().tokenizer, 64)


# ---- response shaping (through the handlers, with the fake tokenizer manager) --------------
def call(handler: Any, tm: FakeTM, body: dict) -> tuple[int, Any]:
    async def run() -> tuple[int, Any]:
        resp = await handler(tm, json.dumps(body).encode(), None)
        if hasattr(resp, "body_iterator"):
            return resp.status_code, [c async for c in resp.body_iterator]
        return resp.status_code, json.loads(resp.body)

    return asyncio.run(run())


def sse_events(chunks: list[str]) -> list[Any]:
    text = "".join(chunks)
    assert text.endswith("data: [DONE]\n\n")
    events = [e[len("data: ") :] for e in text.split("\n\n") if e]
    return [json.loads(e) for e in events[:-1]]


def test_chat_response() -> None:
    body = {"messages": MSGS, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    status, r = call(create_chat_completion, FakeTM(), {**body, "model": "tiny"})
    assert status == 200
    assert r["id"].startswith("chatcmpl-") and r["object"] == "chat.completion"
    assert r["model"] == "tiny" and isinstance(r["created"], int)
    ch = r["choices"][0]
    assert ch["message"] == {"role": "assistant", "content": "one two three"}
    assert ch["finish_reason"] == "length"
    assert r["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    content = ch["logprobs"]["content"]
    assert [c["token"] for c in content] == ["one", "two", "three"]
    assert content[0]["bytes"] == list(b"one") and content[0]["logprob"] == -0.5
    assert [t["token"] for t in content[1]["top_logprobs"]] == ["two", "one"]


def test_chat_stop_reason() -> None:
    status, r = call(create_chat_completion, FakeTM(), {"messages": MSGS, "max_tokens": 20})
    assert status == 200 and r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["completion_tokens"] == 7  # six words and the EOS
    _, r = call(create_chat_completion, FakeTM(), {"messages": MSGS, "stop": ["three"]})
    assert r["choices"][0]["message"]["content"] == "one two "
    assert r["choices"][0]["finish_reason"] == "stop" and r["choices"][0]["matched_stop"] == "three"


def test_chat_stream_shape() -> None:
    tm = FakeTM()
    body = {"messages": MSGS, "max_tokens": 4, "stream": True, "logprobs": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, chunks = call(create_chat_completion, tm, body)
    assert status == 200
    events = sse_events(chunks)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len({e["id"] for e in events}) == 1
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    _, full = call(create_chat_completion, FakeTM(), {**body, "stream": False,
                                                      "stream_options": None})  # fmt: skip
    assert "".join(deltas) == full["choices"][0]["message"]["content"]
    tokens = [c["token"] for e in events[1:-2] for c in e["choices"][0]["logprobs"]["content"]]
    assert tokens == ["one", "two", "three", "four"]
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"][0]["delta"] == {}
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 8


def test_completion_response_and_batch() -> None:
    status, r = call(create_completion, FakeTM(), {"prompt": ["one", "two"], "max_tokens": 2,
                                                   "logprobs": 1})  # fmt: skip
    assert status == 200 and r["id"].startswith("cmpl-") and r["object"] == "text_completion"
    assert [c["index"] for c in r["choices"]] == [0, 1]
    assert r["choices"][0]["text"] == "one two"
    lp = r["choices"][0]["logprobs"]
    assert lp["tokens"] == ["one", "two"] and lp["token_logprobs"] == [-0.5, -0.5]
    assert lp["top_logprobs"] == [{"one": -0.5}, {"two": -0.5}]
    assert lp["text_offset"] == [0, 3]
    assert r["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}


def test_completion_stream_batch() -> None:
    body = {"prompt": ["one", "two"], "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    status, chunks = call(create_completion, FakeTM(), body)
    assert status == 200
    events = sse_events(chunks)
    for i in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"] and e["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == "one two three"
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["length"]
    assert events[-1]["usage"]["completion_tokens"] == 6


def test_abort_maps_to_status() -> None:
    abort = {"type": "abort", "message": "Decode transfer failed", "status_code": 503}
    status, r = call(create_chat_completion, FakeTM(abort), {"messages": MSGS})
    assert status == 503 and r["error"]["message"] == "Decode transfer failed"
    assert r["error"]["code"] == 503
    status, r = call(create_completion, FakeTM(abort), {"prompt": "a", "stream": True})
    assert status == 503  # aborted before the first token: still a plain error response


def test_abort_mid_stream_is_error_chunk() -> None:
    from sglang.srt.entrypoints.openai.serving_base import merge_streams
    from sglang.srt.entrypoints.openai.serving_chat import stream_chat

    async def outputs() -> Any:
        yield {"text": "a", "output_ids": [1], "meta_info": {"finish_reason": None}}
        fr = {"type": "abort", "message": "boom", "status_code": 500}
        yield {"text": "a", "output_ids": [1], "meta_info": {"finish_reason": fr}}

    async def run() -> list[str]:
        first_gen = outputs()
        first = await first_gen.__anext__()
        gen = stream_chat(chat_req(stream=True), merge_streams([(first, first_gen)]), None, "m")
        return [c async for c in gen]

    chunks = asyncio.run(run())
    assert json.loads(chunks[-2][len("data: ") :])["error"]["message"] == "boom"
    assert chunks[-1] == "data: [DONE]\n\n"


def test_serve_maps_errors_to_400() -> None:
    from starlette.requests import Request

    def request(body: bytes) -> Request:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [],
                 "query_string": b""}  # fmt: skip
        return Request(scope, receive)

    async def run(body: bytes) -> Any:
        return await _serve(create_completion, FakeTM(), request(body))

    resp = asyncio.run(run(b"{bad"))
    assert resp.status_code == 400
    assert json.loads(resp.body)["error"]["type"] == "BadRequestError"
    long = json.dumps({"prompt": [7] * 60, "max_tokens": 10}).encode()
    resp = asyncio.run(run(long))  # the tokenizer manager's BadRequestError
    assert resp.status_code == 400 and "context length" in json.loads(resp.body)["error"]["message"]
    resp = asyncio.run(run(json.dumps({"prompt": "a", "model": "other"}).encode()))
    assert resp.status_code == 400 and "tiny" in json.loads(resp.body)["error"]["message"]
