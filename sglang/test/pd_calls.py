"""Client-side helpers for PD fault tests: one /generate call in a background thread with what
its client saw (an HTTP status and message, a stream's chunks, or the exception of a broken
connection) and when; a server's scheduler state and its KV pages not returned.

Used by sglang/test/fault_matrix.py and benchmarks/soak_pd.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import requests


def pd_state(url: str) -> dict[str, Any]:
    info = requests.get(url + "/get_server_info", timeout=10).json()
    return info["internal_states"][0]


def leaked_pages(url: str, timeout: float = 20) -> int:
    """Pages neither free nor cached once the server is idle (waits up to ``timeout``)."""
    deadline = time.time() + timeout
    while True:
        st = pd_state(url)
        pool = st["kv_pool"]
        pd = st.get("disaggregation", {})
        leaked = pool["total_pages"] - pool["free_pages"] - pool["cached_pages"]
        slots = pd.get("metadata_slots", 0) - pd.get("metadata_slots_free", 0)
        if (leaked == 0 and slots == 0) or time.time() > deadline:
            return leaked
        time.sleep(0.2)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"never saw: {what}")
        time.sleep(0.02)


@dataclass
class Outcome:
    """What one client call saw: an HTTP status and message, or the exception it raised."""
    status: Optional[int] = None
    message: str = ""
    text: str = ""
    error: str = ""  # exception class name for a broken connection
    at: float = 0.0
    chunks: int = 0

    def brief(self) -> str:
        if self.error:
            return f"{self.error} after {self.chunks} chunks" if self.chunks else self.error
        if not self.message:
            return f"{self.status} ok"
        short = re.sub(r"for request rid=\w+ bootstrap_room=\d+ with exception "
                       r"KVTransferError\(bootstrap_room=\d+\)", "", self.message)
        return f"{self.status} {short[:110]}"


def _message(body: Any) -> str:
    if isinstance(body, dict):
        if "error" in body:
            err = body["error"]
            return err.get("message", "") if isinstance(err, dict) else str(err)
        reason = body.get("meta_info", {}).get("finish_reason") or {}
        if reason.get("type") == "abort":
            return reason.get("message", "")
    return ""


class Call:
    """One /generate call in a background thread; ``stream`` reads SGLang's SSE chunks."""

    def __init__(self, url: str, body: dict, stream: bool = False):
        self.out = Outcome()
        self.first_chunk = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, body, stream), daemon=True)
        self.thread.start()

    def _run(self, url: str, body: dict, stream: bool) -> None:
        out = self.out
        try:
            r = requests.post(url + "/generate", json={**body, "stream": stream},
                              timeout=120, stream=stream)
            out.status = r.status_code
            if stream and r.status_code == 200:
                for line in r.iter_lines():
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    out.chunks += 1
                    out.message = _message(chunk) or out.message
                    out.text = chunk.get("text", out.text)
                    self.first_chunk.set()
            else:
                body = r.json()
                out.message = _message(body)
                out.text = body.get("text", "") if isinstance(body, dict) else ""
        except requests.RequestException as e:
            out.error = type(e).__name__
        finally:
            out.at = time.time()
            self.first_chunk.set()

    def result(self, timeout: float = 120) -> Outcome:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client call never ended"
        return self.out
