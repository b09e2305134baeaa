"""One benchmark request per backend over aiohttp, timed as SGLang 0.5's bench_serving times it:
TTFT = send to the first chunk carrying text, ITL = gaps between text chunks (on the native
backend a chunk of k new tokens after a gap g counts k gaps of g/k), latency = send to the last
chunk. A non-streamed reply counts as one chunk (TTFT = latency, no ITL). Output lengths are the
server's ``completion_tokens``. Errors record the HTTP status and the server's message."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

import aiohttp

AIOHTTP_TIMEOUT = aiohttp.ClientTimeout(total=6 * 60 * 60)
READ_BUFSIZE = 10 * 1024 ** 2


@dataclass
class RequestFuncInput:
    prompt: Union[str, List[int]]
    api_url: str
    prompt_len: int
    output_len: int
    model: str
    stream: bool = True
    ignore_eos: bool = True
    return_logprob: bool = False
    lora_name: Optional[str] = None
    extra_request_body: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestFuncOutput:
    generated_text: str = ""
    success: bool = False
    latency: float = 0.0
    ttft: float = 0.0
    itl: List[float] = field(default_factory=list)
    prompt_len: int = 0
    error: str = ""
    output_len: int = 0


def auth_headers() -> Dict[str, str]:
    """SGLang's tool sends ``OPENAI_API_KEY`` as a bearer token when set."""
    key = os.environ.get("OPENAI_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def client_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=AIOHTTP_TIMEOUT, read_bufsize=READ_BUFSIZE)


def _strip(line: bytes) -> Optional[str]:
    text = line.strip().decode("utf-8")
    if not text:
        return None
    return text[len("data:"):].strip() if text.startswith("data:") else text


async def _http_error(response: aiohttp.ClientResponse) -> str:
    body = (await response.text()).strip()
    try:
        msg = json.loads(body)
        msg = msg.get("error", msg) if isinstance(msg, dict) else msg
        msg = msg.get("message", msg) if isinstance(msg, dict) else msg
    except ValueError:
        msg = body
    return f"HTTP {response.status} {response.reason}: {msg}"[:2000]


class _Timer:
    """Text-chunk timing shared by every backend."""

    def __init__(self, out: RequestFuncOutput):
        self.out, self.st = out, time.perf_counter()
        self.last, self.now, self.latency = self.st, self.st, 0.0

    def chunk(self, new_tokens: int = 1) -> None:
        now = self.now  # the arrival time of the chunk being parsed
        if self.out.ttft == 0.0:
            self.out.ttft = now - self.st
        elif new_tokens > 0:
            self.out.itl.extend([(now - self.last) / new_tokens] * new_tokens)
        self.last = now

    def seen(self) -> None:
        self.now = time.perf_counter()
        self.latency = self.now - self.st


async def _run(inp: RequestFuncInput, payload: dict, parse, pbar=None) -> RequestFuncOutput:
    out = RequestFuncOutput(prompt_len=inp.prompt_len, output_len=inp.output_len)
    timer = _Timer(out)
    try:
        async with client_session() as session:
            async with session.post(inp.api_url, json=payload, headers=auth_headers()) as resp:
                if resp.status != 200:
                    out.error = await _http_error(resp)
                else:
                    async for line in resp.content:
                        chunk = _strip(line)
                        if chunk is None:
                            continue
                        timer.seen()
                        if chunk == "[DONE]":
                            continue
                        data = json.loads(chunk)
                        if isinstance(data, dict) and "error" in data:
                            raise RuntimeError(f"server error in stream: {data['error']}")
                        parse(data, out, timer)
                    out.latency = timer.latency
                    out.success = True
    except Exception:
        out.success = False
        out.error = "".join(traceback.format_exception(*sys.exc_info()))
    if pbar is not None:
        pbar.update(1)
    return out


async def request_sglang_generate(inp: RequestFuncInput, pbar=None) -> RequestFuncOutput:
    payload = {
        ("text" if isinstance(inp.prompt, str) else "input_ids"): inp.prompt,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": inp.output_len,
                            "ignore_eos": inp.ignore_eos},
        "stream": inp.stream,
        "return_logprob": inp.return_logprob,
        "logprob_start_len": -1,
        **({"lora_path": inp.lora_name} if inp.lora_name else {}),
        **inp.extra_request_body,
    }
    state = {"last": 0}

    def parse(data: dict, out: RequestFuncOutput, timer: _Timer) -> None:
        if not data.get("text"):
            return
        out.generated_text = data["text"]
        n = data["meta_info"]["completion_tokens"]
        out.output_len = n
        if out.ttft != 0.0 and n == state["last"]:
            return
        timer.chunk(n - state["last"])
        state["last"] = n

    return await _run(inp, payload, parse, pbar)


async def _openai(inp: RequestFuncInput, payload: dict, text_of, pbar) -> RequestFuncOutput:
    """Both OpenAI routes: the usage gives the token count, ``text_of(choice)`` the new text."""
    payload = {**payload, "temperature": 0.0, "max_tokens": inp.output_len, "stream": inp.stream,
               "ignore_eos": inp.ignore_eos, **inp.extra_request_body}
    if inp.stream:
        payload.setdefault("stream_options", {"include_usage": True})

    def parse(data: dict, out: RequestFuncOutput, timer: _Timer) -> None:
        usage = data.get("usage") or {}
        if "completion_tokens" in usage:
            out.output_len = usage["completion_tokens"]
        text = text_of((data.get("choices") or [{}])[0])
        if text:
            timer.chunk()
            out.generated_text += text

    return await _run(inp, payload, parse, pbar)


async def request_openai_completions(inp: RequestFuncInput, pbar=None) -> RequestFuncOutput:
    return await _openai(inp, {"model": inp.model, "prompt": inp.prompt, "best_of": 1},
                         lambda choice: choice.get("text"), pbar)


async def request_openai_chat(inp: RequestFuncInput, pbar=None) -> RequestFuncOutput:
    return await _openai(
        inp, {"model": inp.model, "messages": [{"role": "user", "content": inp.prompt}]},
        lambda choice: (choice.get("delta") or choice.get("message") or {}).get("content"),
        pbar)


ASYNC_REQUEST_FUNCS = {
    "sglang": request_sglang_generate,
    "sglang-native": request_sglang_generate,
    "sglang-oai": request_openai_completions,
    "sglang-oai-chat": request_openai_chat,
}
API_ROUTES = {"sglang": "/generate", "sglang-native": "/generate",
              "sglang-oai": "/v1/completions", "sglang-oai-chat": "/v1/chat/completions"}
