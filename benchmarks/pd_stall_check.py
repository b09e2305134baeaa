"""The stall check of bench_pd_vs_unified.py: does a KV transfer into the decode slow its steps?

One lone stream on a 1P1D cluster; long prompts are then sent one at a time. With chunked prefill
the prefill writes each chunk's KV into the decode while it computes the next, so from a long
prompt's arrival to its first token (a "window") transfers are in flight into the decode. Reported:
the stream's ITL inside the windows over outside them, and the decode process's own CPU seconds per
streamed token inside over outside (the work transfers add to the decode, as opposed to waiting
for a core).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import psutil
import requests

import pd_vs_unified_report as rep
from bench_pd import Prompts

from sglang.test.server_utils import Proc


def cpu_seconds(procs: list[Proc]) -> float:
    total = 0.0
    for p in procs:
        try:
            root = psutil.Process(p.popen.pid)
            for q in [root, *root.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def stream_until(url: str, ids: list[int], max_new: int, stop: threading.Event,
                 chunks: list[tuple[float, int]]) -> None:
    """Streaming /generate, recording (arrival time, new tokens) per chunk, until ``stop``."""
    body = {"input_ids": ids, "stream": True, "sampling_params": {
        "max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}}
    seen = 0
    with requests.post(url + "/generate", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if stop.is_set():
                break
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            n = len(json.loads(line[5:]).get("output_ids") or [])
            chunks.append((time.perf_counter(), n - seen))
            seen = n


def stall_check(url: str, prompts: Prompts, c: dict, decode: Proc) -> dict[str, Any]:
    """A lone stream on the decode; long prompts are prefilled and transferred in, one at a time
    with quiet stretches of 20 tokens between. Windows = [long prompt sent, its first token].
    Besides the stream's ITL, the decode's own CPU seconds per streamed token inside and outside
    the windows: work the transfer adds to the decode process (Mooncake's TCP receive runs in
    its threads) against time spent waiting for a core."""
    chunks: list[tuple[float, int]] = []
    stop = threading.Event()
    th = threading.Thread(target=stream_until, daemon=True,
                          args=(url, prompts(64), c["stream_tokens"], stop, chunks))
    th.start()
    deadline = time.time() + 120
    while len(chunks) < 10 and th.is_alive() and time.time() < deadline:
        time.sleep(0.01)

    def mark(busy: bool) -> None:
        marks.append((time.perf_counter(), cpu_seconds([decode]), busy))

    def quiet_tokens(n: int) -> None:
        q0 = len(chunks)
        while len(chunks) < q0 + n and th.is_alive():
            time.sleep(0.005)

    marks: list[tuple[float, float, bool]] = []
    mark(False)
    quiet_tokens(20)
    windows = []
    for _ in range(c["stall_longs"]):
        mark(True)
        body = {"input_ids": prompts(c["long_len"]), "sampling_params": {
            "max_new_tokens": 1, "temperature": 0}}
        requests.post(url + "/generate", json=body, timeout=600).raise_for_status()
        windows.append((marks[-1][0], time.perf_counter()))
        mark(False)
        quiet_tokens(20)
    mark(False)
    stop.set()
    th.join(60)
    quiet, busy = rep.split_by_windows(list(chunks), windows)
    cpu = {False: [0.0, 0], True: [0.0, 0]}  # CPU seconds, tokens
    for (t0, c0, b), (t1, c1, _) in zip(marks, marks[1:]):
        cpu[b][0] += c1 - c0
        cpu[b][1] += sum(k for t, k in chunks if t0 < t <= t1)
    per_tok = {b: v[0] / v[1] if v[1] else float("nan") for b, v in cpu.items()}
    return {**rep.stall_ratio(quiet, busy),
            "window_ms": sum(b - a for a, b in windows) / len(windows) * 1e3,
            "cpu_ms_per_token_quiet": per_tok[False] * 1e3,
            "cpu_ms_per_token_busy": per_tok[True] * 1e3,
            "cpu_ratio": per_tok[True] / per_tok[False] if per_tok[False] > 0 else float("nan"),
            "stream_ended_early": not any(True for t, _ in chunks if t > windows[-1][1])}
