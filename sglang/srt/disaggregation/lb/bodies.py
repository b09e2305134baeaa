"""What the balancer does to request and response bodies (pure functions, no I/O)."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from typing import Any, Optional

from sglang.srt.disaggregation.lb.pool import Prefill

MAX_ROOM = 2**63 - 1
INPUT_LOGPROB_KEYS = ("input_token_logprobs", "input_top_logprobs", "input_token_ids_logprobs")


def new_room(rng: random.Random | None = None) -> int:
    return (rng or random).randint(0, MAX_ROOM)


def batch_size(body: dict[str, Any], endpoint: str) -> Optional[int]:
    """Number of prompts of a batch request, None for a single one."""
    if endpoint == "generate":
        text, ids = body.get("text"), body.get("input_ids")
        if isinstance(text, list):
            return len(text)
        if text is None and isinstance(ids, list) and ids and isinstance(ids[0], list):
            return len(ids)
    elif endpoint == "v1/completions":
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            return len(prompt)
    return None


def inject_bootstrap(
    body: dict[str, Any], prefill: Prefill, endpoint: str, rng: random.Random | None = None
) -> dict[str, Any]:
    """A copy of ``body`` with bootstrap_host/port/room (a list with a fresh room per prompt
    for a batch)."""
    out = dict(body)
    n = batch_size(body, endpoint)
    if n is None:
        out["bootstrap_host"] = prefill.bootstrap_host
        out["bootstrap_port"] = prefill.bootstrap_port
        out["bootstrap_room"] = new_room(rng)
    else:
        out["bootstrap_host"] = [prefill.bootstrap_host] * n
        out["bootstrap_port"] = [prefill.bootstrap_port] * n
        out["bootstrap_room"] = [new_room(rng) for _ in range(n)]
    return out


def ensure_rids(body: dict[str, Any], endpoint: str) -> list[str]:
    """Give the request rids if the client did not (so a leg can be aborted); returns them."""
    n = batch_size(body, endpoint)
    rid = body.get("rid")
    if rid is None:
        rid = uuid.uuid4().hex if n is None else [uuid.uuid4().hex for _ in range(n)]
        body["rid"] = rid
    if isinstance(rid, list):
        return [str(r) for r in rid]
    return [str(rid)]


def wants_logprob_merge(body: dict[str, Any]) -> bool:
    flag = body.get("return_logprob")
    return any(flag) if isinstance(flag, list) else bool(flag)


def _merge_meta(decode_item: Any, prefill_item: Any) -> None:
    if not isinstance(decode_item, dict) or not isinstance(prefill_item, dict):
        return
    d_meta, p_meta = decode_item.get("meta_info"), prefill_item.get("meta_info")
    if not isinstance(d_meta, dict) or not isinstance(p_meta, dict):
        return
    for key in INPUT_LOGPROB_KEYS:
        if p_meta.get(key):
            d_meta[key] = list(p_meta[key]) + list(d_meta.get(key) or [])


def merge_input_logprobs(decode_out: Any, prefill_out: Any) -> Any:
    """Prepend the prefill's input logprobs to the decode's output (per item for a batch)."""
    if isinstance(decode_out, list) and isinstance(prefill_out, list):
        for d, p in zip(decode_out, prefill_out):
            _merge_meta(d, p)
    else:
        _merge_meta(decode_out, prefill_out)
    return decode_out


# ---- server-sent events ---------------------------------------------------------------------
def split_events(buf: bytes) -> tuple[list[bytes], bytes]:
    """Complete SSE events (without the blank-line separator) and the unfinished rest."""
    *events, rest = buf.replace(b"\r\n", b"\n").split(b"\n\n")
    return events, rest


def event_data(event: bytes) -> Optional[bytes]:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


def iter_json_events(events: list[bytes]) -> Iterator[dict[str, Any]]:
    for ev in events:
        data = event_data(ev)
        if data and data != b"[DONE]":
            try:
                obj = json.loads(data)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def merge_sse_event(event: bytes, prefill_first: dict[int, dict[str, Any]]) -> bytes:
    """A decode ``data:`` event with the matching prefill first chunk's input logprobs."""
    data = event_data(event)
    if not data or data == b"[DONE]" or not prefill_first:
        return event
    try:
        obj = json.loads(data)
    except ValueError:
        return event
    if not isinstance(obj, dict):
        return event
    _merge_meta(obj, prefill_first.get(int(obj.get("index", 0) or 0)))
    return b"data: " + json.dumps(obj).encode()


def stream_failure(obj: dict[str, Any]) -> Optional[tuple[int, str]]:
    """(status, message) when an SSE chunk reports an error or an abort finish."""
    err = obj.get("error")
    if err is not None:
        msg = err.get("message", err) if isinstance(err, dict) else err
        code = err.get("code") if isinstance(err, dict) else None
        return (code if isinstance(code, int) and code >= 400 else 500), str(msg)
    fr = (obj.get("meta_info") or {}).get("finish_reason")
    if isinstance(fr, dict) and fr.get("type") == "abort":
        return int(fr.get("status_code") or 500), str(fr.get("message") or "aborted")
    return None


def error_message(body: bytes, limit: int = 500) -> str:
    """The message inside an error body (OpenAI, SGLang or FastAPI shape), else its text."""
    try:
        obj = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")[:limit]
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:limit]
        if err is not None:
            return str(err)[:limit]
        if "detail" in obj:
            return str(obj["detail"])[:limit]
        failure = stream_failure(obj)
        if failure is not None:
            return failure[1][:limit]
    return json.dumps(obj)[:limit]


_ERROR_TYPES = {400: "BadRequestError", 502: "BadGatewayError", 503: "ServiceUnavailableError",
                504: "GatewayTimeoutError"}


def error_body(message: str, status: int) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "InternalServerError")
    return {"object": "error", "error": {"message": message, "type": kind, "code": status}}


def request_text(body: dict[str, Any], endpoint: str) -> str:
    """The prompt as text, for prefix affinity (cache_aware): the first prompt of a batch, token
    ids written out, a chat's message contents joined."""
    if endpoint == "v1/chat/completions":
        parts = []
        for m in body.get("messages") or []:
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, list):
                content = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
            parts.append(f"{m.get('role', '') if isinstance(m, dict) else ''}: {content or ''}")
        return "\n".join(parts)
    prompt = body.get("prompt") if endpoint == "v1/completions" else body.get("text")
    if prompt is None and endpoint == "generate":
        prompt = body.get("input_ids")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, list):
        return " ".join(map(str, prompt))
    return prompt if isinstance(prompt, str) else ""
