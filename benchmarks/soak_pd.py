"""Soak: mixed traffic for a bounded time against 2 prefills + 2 decodes behind mini_lb; does
memory or the number of open files of any process grow, does any request hang or get a 500.

    python benchmarks/soak_pd.py [--duration 600] [--quick] [--backend mooncake|nixl]
                                 [--concurrency 6] [--model-path DIR]

Traffic (aiohttp clients, --concurrency at once): short and long (about 600-token) prompts on
/generate, streams read to the end, streams dropped after the first chunk, requests dropped
after 0.3 s (client disconnects: the servers abort them), /v1/chat/completions, and bad requests
(malformed JSON, an empty text, a negative max_new_tokens) that must get a 400. Greedy answers
to the same prompt must not change. Per process (mini_lb, each server's HTTP process and its
children) RSS and open file descriptors (psutil) after a warm-up and at the end, once idle;
then every server's KV pool must be whole. Prints requests by outcome, the process table and a
final JSON line. --quick: 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sglang.test.pd_calls import leaked_pages  # noqa: E402
from sglang.test.server_utils import launch_pd_cluster  # noqa: E402

ARGS = ["--page-size", "4", "--max-total-tokens", "8192", "--chunked-prefill-size", "128",
        "--context-length", "2048"]
WORDS = ("river mill village children water wheel morning baker door bread market road "
         "winter lamp harbour boat sail storm island light").split()
SHORT = ["Once upon a time", "The capital of France is", "Write a poem about the sea:",
         "In the morning the baker", "A list of colours: red,"]
LONG = [" ".join(random.Random(i).choice(WORDS) for _ in range(550)) for i in range(3)]
GREEDY = {"temperature": 0, "max_new_tokens": 12}
KINDS = {"short": 30, "long": 12, "stream": 14, "stream_drop": 8, "disconnect": 10,
         "chat": 10, "bad": 16}


def processes(cluster) -> dict[str, psutil.Process]:
    out = {}
    for proc in cluster.procs():
        top = psutil.Process(proc.popen.pid)
        out[proc.name] = top
        for i, child in enumerate(top.children(recursive=True)):
            out[f"{proc.name}/child{i}"] = child
    return out


def snapshot(procs: dict[str, psutil.Process]) -> dict[str, dict]:
    snap = {}
    for name, p in procs.items():
        try:
            snap[name] = {"rss_mb": round(p.memory_info().rss / 2**20, 1), "fds": p.num_fds()}
        except psutil.Error:
            snap[name] = {"rss_mb": None, "fds": None}
    return snap


async def one(session: aiohttp.ClientSession, url: str, kind: str, answers: dict) -> str:
    """Send one request of ``kind``; its outcome."""
    gen = url + "/generate"
    try:
        if kind in ("short", "long"):
            text = random.choice(SHORT if kind == "short" else LONG)
            async with session.post(gen, json={"text": text, "sampling_params": GREEDY}) as r:
                if r.status != 200:
                    return f"http_{r.status}"
                got = (await r.json())["text"]
            if answers.setdefault(text, got) != got:
                return "wrong_answer"
            return "ok"
        if kind in ("stream", "stream_drop"):
            body = {"text": random.choice(SHORT), "stream": True,
                    "sampling_params": {**GREEDY, "max_new_tokens": 24}}
            async with session.post(gen, json=body) as r:
                if r.status != 200:
                    return f"http_{r.status}"
                async for line in r.content:
                    if line.startswith(b"data: [DONE]"):
                        return "ok"
                    if b'"error"' in line:
                        return "stream_error"
                    if kind == "stream_drop" and line.startswith(b"data: "):
                        return "dropped_stream"  # leaving the block closes the connection
            return "stream_cut"
        if kind == "disconnect":
            body = {"text": random.choice(LONG), "sampling_params": {**GREEDY,
                                                                     "max_new_tokens": 64}}
            try:
                async with session.post(gen, json=body,
                                        timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                    await r.read()
                    return "ok" if r.status == 200 else f"http_{r.status}"
            except asyncio.TimeoutError:
                return "disconnected"
        if kind == "chat":
            body = {"messages": [{"role": "user", "content": random.choice(SHORT)}],
                    "max_tokens": 12, "temperature": 0}
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                await r.read()
                return "ok" if r.status == 200 else f"http_{r.status}"
        bad = random.choice([b"{oops", b'{"text": ""}', b'{"text": "a", "sampling_params": '
                             b'{"max_new_tokens": -1}}', b'{"text": 5}', b"[]"])
        async with session.post(gen, data=bad,
                                headers={"Content-Type": "application/json"}) as r:
            await r.read()
            return "bad_refused_400" if r.status == 400 else f"bad_got_{r.status}"
    except asyncio.TimeoutError:
        return "timeout"
    except aiohttp.ClientError as e:
        return f"client_error_{type(e).__name__}"


async def traffic(url: str, seconds: float, concurrency: int) -> Counter:
    outcomes: Counter = Counter()
    answers: dict[str, str] = {}
    end = time.time() + seconds
    kinds, weights = zip(*KINDS.items())

    async def worker() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            while time.time() < end:
                kind = random.choices(kinds, weights)[0]
                outcomes[f"{kind}:{await one(s, url, kind, answers)}"] += 1

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    return outcomes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--quick", action="store_true", help="30 s")
    ap.add_argument("--backend", default="mooncake", choices=["mooncake", "nixl"])
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--model-path", default=None)
    args = ap.parse_args()
    duration = 30 if args.quick else args.duration
    model = args.model_path
    if model is None:
        from sglang.tools.create_model import cached_model

        model = cached_model("tiny", Path(os.environ.get("SGLANG_TEST_MODEL_DIR",
                                                          ROOT / "models")), 0)
    log_dir = tempfile.mkdtemp(prefix="soak-pd-")
    t0 = time.time()
    cluster = launch_pd_cluster(model, log_dir, args.backend, 2, 2, ARGS,
                                env={"SGLANG_CPU_THREADS": "1"})
    try:
        asyncio.run(traffic(cluster.url, 5, 2))  # warm-up: first allocations, connections
        procs = processes(cluster)
        start = snapshot(procs)
        outcomes = asyncio.run(traffic(cluster.url, duration, args.concurrency))
        leaks = {p.name: leaked_pages(p.url, 60) for p in cluster.prefills + cluster.decodes}
        end = snapshot(procs)
        alive = {name: p.is_running() for name, p in procs.items()}
    finally:
        cluster.stop()
    print(f"soak: {duration:.0f} s, 2P2D {args.backend} behind mini_lb, "
          f"{args.concurrency} clients; logs {log_dir}")
    print(f"\n{'outcome':34} {'count':>7}")
    for k, v in sorted(outcomes.items()):
        print(f"{k:34} {v:7d}")
    print(f"\n{'process':28} {'RSS MB start':>12} {'end':>8} {'fds start':>9} {'end':>5}")
    for name in start:
        s, e = start[name], end[name]
        print(f"{name:28} {s['rss_mb']!s:>12} {e['rss_mb']!s:>8} {s['fds']!s:>9} {e['fds']!s:>5}")
    print(f"\nKV pages not free or cached at the end, per server: {leaks}")
    bad = {k: v for k, v in outcomes.items()
           if not k.endswith((":ok", ":disconnected", ":dropped_stream", ":bad_refused_400"))}
    print(json.dumps({"soak_pd": {"duration_s": duration, "backend": args.backend,
                                  "requests": sum(outcomes.values()), "outcomes": outcomes,
                                  "unexpected": bad, "pages_leaked": leaks, "alive": alive,
                                  "processes": {n: {"start": start[n], "end": end[n]}
                                                for n in start},
                                  "wall_s": round(time.time() - t0, 1)}}))
    return 1 if bad or any(leaks.values()) or not all(alive.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
