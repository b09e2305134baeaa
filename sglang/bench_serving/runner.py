"""Runs a benchmark: resolves the server's URLs, model and tokenizer (``GET /v1/models``,
``GET /model_info``), draws the dataset, sends warmup requests, optionally flushes the cache,
then sends every request with Poisson arrivals (``--request-rate``) under ``--max-concurrency``,
reads ``GET /server_info`` and reports. ``run_benchmark(args)`` returns the result dict (SGLang's
JSONL keys plus the per-request arrays of ``--output-details``)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any, List, Optional, Tuple

import numpy as np
import requests

from sglang.bench_serving import report
from sglang.bench_serving.datasets import DatasetRow, get_dataset, load_tokenizer
from sglang.bench_serving.metrics import calculate_metrics, parse_goodput
from sglang.bench_serving.request_funcs import (API_ROUTES, ASYNC_REQUEST_FUNCS,
                                                RequestFuncInput, RequestFuncOutput,
                                                auth_headers)

HTTP_TIMEOUT = 60


def resolve_base_url(args: Any) -> str:
    if args.base_url:
        return args.base_url.rstrip("/")
    return f"http://{args.host}:{args.port or 30000}"


def _get_json(url: str) -> Optional[dict]:
    try:
        r = requests.get(url, headers=auth_headers(), timeout=HTTP_TIMEOUT)
        return r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def resolve_model_and_tokenizer(args: Any, base_url: str) -> Tuple[str, str]:
    """``--model`` else the first id of /v1/models; ``--tokenizer`` else /model_info's
    model_path (a local directory on the server's machine), else the model id."""
    model = args.model
    if model is None:
        data = (_get_json(f"{base_url}/v1/models") or {}).get("data") or []
        model = data[0]["id"] if data else None
    tokenizer = args.tokenizer
    if tokenizer is None:
        info = _get_json(f"{base_url}/model_info") or _get_json(f"{base_url}/get_model_info")
        tokenizer = (info or {}).get("tokenizer_path") or (info or {}).get("model_path") or model
    if model is None and tokenizer is None:
        raise RuntimeError(f"cannot reach {base_url}/v1/models or /model_info; give --model and "
                           "--tokenizer, and check --host/--port/--base-url")
    return model or tokenizer, tokenizer


def read_server_info(base_url: str) -> Tuple[Optional[dict], Optional[float]]:
    """/server_info (else /get_server_info); behind a PD balancer its decode part, as SGLang."""
    info = _get_json(f"{base_url}/server_info") or _get_json(f"{base_url}/get_server_info")
    if not isinstance(info, dict):
        return None, None
    target = info
    if isinstance(info.get("decode"), list) and info["decode"] and \
            isinstance(info["decode"][0], dict):
        target = info["decode"][0]
    states = target.get("internal_states") or [{}]
    accept = states[0].get("avg_spec_accept_length") if isinstance(states[0], dict) else None
    return info, accept


def flush_cache(base_url: str) -> None:
    """POST /flush_cache: on a PD balancer (mini_lb, sglang-router) it reaches every worker."""
    r = requests.post(f"{base_url}/flush_cache", headers=auth_headers(), timeout=HTTP_TIMEOUT)
    if r.status_code != 200:
        print(f"Warning: /flush_cache answered {r.status_code}: {r.text.strip()[:300]}")


async def _arrivals(rows: List[DatasetRow], rate: float, np_rng: np.random.RandomState):
    for row in rows:
        yield row
        if rate == float("inf"):
            continue
        await asyncio.sleep(np_rng.exponential(1.0 / rate))


async def benchmark(args: Any, api_url: str, base_url: str, model: str, tokenizer,
                    rows: List[DatasetRow], rng: random.Random,
                    np_rng: np.random.RandomState) -> dict:
    func = ASYNC_REQUEST_FUNCS[args.backend]
    extra = json.loads(args.extra_request_body) if args.extra_request_body else {}
    lora = args.lora_name or []

    def make_input(row: DatasetRow, output_len: int, lora_name=None) -> RequestFuncInput:
        return RequestFuncInput(
            prompt=row.prompt, api_url=api_url, prompt_len=row.prompt_len, output_len=output_len,
            model=model, stream=not args.disable_stream, ignore_eos=not args.disable_ignore_eos,
            return_logprob=args.return_logprob, lora_name=lora_name, extra_request_body=extra)

    if args.warmup_requests > 0:
        print(f"Starting warmup with {args.warmup_requests} sequences...")
        warm = make_input(rows[0], min(rows[0].output_len, 32), lora[0] if lora else None)
        outs = await asyncio.gather(*[func(warm) for _ in range(args.warmup_requests)])
        if not any(o.success for o in outs):
            raise RuntimeError("Warmup failed - Please make sure benchmark arguments are "
                               f"correctly specified. Error: {outs[0].error}")
        print(f"Warmup completed with {args.warmup_requests} sequences. "
              "Starting main benchmark run...")
    if args.flush_cache:
        flush_cache(base_url)
        time.sleep(1.0)
    if args.profile:
        r = requests.post(f"{base_url}/start_profile", headers=auth_headers(), timeout=60)
        print("Profiler started" if r.ok else f"Profiler not started: HTTP {r.status_code}")

    semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    pbar = None
    if not args.disable_tqdm:
        from tqdm.asyncio import tqdm

        pbar = tqdm(total=len(rows))

    async def limited(inp: RequestFuncInput) -> RequestFuncOutput:
        if semaphore is None:
            return await func(inp, pbar)
        async with semaphore:
            return await func(inp, pbar)

    start = time.perf_counter()
    tasks = []
    async for row in _arrivals(rows, args.request_rate, np_rng):
        name = lora[rng.randint(0, len(lora) - 1)] if lora else None
        tasks.append(asyncio.create_task(limited(make_input(row, row.output_len, name))))
    outputs: List[RequestFuncOutput] = await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    if pbar is not None:
        pbar.close()
    if args.profile:
        requests.post(f"{base_url}/stop_profile", headers=auth_headers(), timeout=60)

    server_info, accept = read_server_info(base_url)
    goodput = parse_goodput(args.goodput) if args.goodput else None
    metrics, output_lens = calculate_metrics([o.prompt_len for o in outputs], outputs,
                                             duration, tokenizer, goodput)
    print(report.format_result(args, metrics, duration, accept))
    if metrics.failed:
        print(report.format_errors(outputs))
    result = report.build_result(args, metrics, duration, accept, server_info)
    details = report.build_details(outputs, output_lens)
    path = report.append_jsonl(args, result, details)
    print(f"Results appended to {path}")
    return result | details


def run_benchmark(args: Any) -> dict:
    """Run one benchmark described by ``args`` (``parse_args`` or ``make_args``)."""
    from sglang.bench_serving.args import check_args

    check_args(args)
    base_url = resolve_base_url(args)
    api_url = base_url + API_ROUTES[args.backend]
    model, tokenizer_id = resolve_model_and_tokenizer(args, base_url)
    print(f"benchmark_args={args}")
    tokenizer = load_tokenizer(tokenizer_id)
    rng, np_rng = random.Random(args.seed), np.random.RandomState(args.seed)
    rows = get_dataset(args, tokenizer, rng, np_rng)
    return asyncio.run(benchmark(args, api_url, base_url, model, tokenizer, rows, rng, np_rng))
