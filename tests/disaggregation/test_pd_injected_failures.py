"""5 % injected KV-transfer failures, 300 requests per backend through mini_lb.

The prefill fails each request's transfer with probability 0.05
(SGLANG_TEST_DISAGG_FAILURE_PROB, one draw per request). mini_lb retries a request whose prefill
half failed before anything was streamed, once, on a fresh room. Every request must end with an
answer equal to the unified server's or a clear error; at least 95 % must succeed; both servers
stay healthy, and their pools and metadata slots all come back.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import launch_pd_cluster

N_REQUESTS = 300
CONCURRENCY = 12
PROMPTS = [f"Request number {i} asks about {w}" for i, w in
           enumerate(["the sea", "a cat", "red apples", "trains at night", "winter", "Paris"])]
SAMPLING = {"temperature": 0, "max_new_tokens": 6}
ARGS = ["--page-size", "4", "--max-total-tokens", "4096", "--chunked-prefill-size", "32",
        "--context-length", "1024"]


async def _one(session: aiohttp.ClientSession, url: str, i: int) -> tuple[int, str, str]:
    prompt, stream = PROMPTS[i % len(PROMPTS)], i % 3 == 0
    body = {"text": prompt, "sampling_params": SAMPLING, "stream": stream}
    async with session.post(url + "/generate", json=body) as r:
        if not stream or r.status != 200:  # a refusal before streaming is a JSON error
            data = await r.json(content_type=None)
            if r.status != 200:
                return r.status, prompt, json.dumps(data)[:300]
            return 200, prompt, data["text"]
        text, error = "", None
        async for raw in r.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                error = json.dumps(chunk)[:300]
            else:
                text = chunk["text"]
        return (r.status if error is None else 500), prompt, error or text


async def _run(url: str) -> list[tuple[int, str, str]]:
    sem = asyncio.Semaphore(CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def bounded(i):
            async with sem:
                return await _one(session, url, i)
        return await asyncio.gather(*(bounded(i) for i in range(N_REQUESTS)))


@pytest.mark.parametrize("backend", ["mooncake", "nixl"])
def test_five_percent_injected_failures_are_retried(backend, tiny_model, log_dir, unified):
    want = {}
    for p in PROMPTS:
        r = requests.post(unified + "/generate", json={"text": p, "sampling_params": SAMPLING},
                          timeout=60)
        want[p] = r.json()["text"]
    cluster = launch_pd_cluster(
        tiny_model, f"{log_dir}/injected-{backend}", backend, args=ARGS,
        env={"SGLANG_TEST_DISAGG_FAILURE_PROB": "0.05"},
    )
    try:
        results = asyncio.run(_run(cluster.url))
        ok = [r for r in results if r[0] == 200]
        failed = [r for r in results if r[0] != 200]
        print(f"\n{backend}: {len(ok)}/{N_REQUESTS} succeeded; failures: {failed[:3]}")
        for _, prompt, text in ok:
            assert text == want[prompt], (prompt, text, want[prompt])
        for status, _, err in failed:  # a clear error: a 5xx with a message naming the cause
            assert status in (500, 502, 503, 504) and "fail" in err.lower(), (status, err)
        assert len(ok) >= 0.95 * N_REQUESTS, f"only {len(ok)} of {N_REQUESTS} succeeded"
        # the retries really happened: the prefill saw injected failures
        log = cluster.prefills[0].log_tail(4000)
        assert "SGLANG_TEST_DISAGG_FAILURE_PROB" in log
        for proc in (*cluster.prefills, *cluster.decodes):
            assert requests.get(proc.url + "/health", timeout=10).status_code == 200
            assert_pool_whole(proc.url)
    finally:
        cluster.stop()
