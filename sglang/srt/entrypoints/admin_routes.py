"""SGLang's admin routes: health, readiness, server/model info, load, aborts, cache flush.

Names and fields as SGLang 0.5's: /health (503 while starting or when the scheduler does not
answer within SGLANG_HEALTH_CHECK_TIMEOUT), /health_generate, /ready, /server_info and
/model_info (with the older /get_server_info and /get_model_info as aliases), /get_load (a list
of {dp_rank, num_reqs, num_waiting_reqs, num_tokens}, as sglang-router reads it), /v1/loads,
/v1/models/{model}, /abort_request ({"rid"} or {"abort_all": true}), /flush_cache.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sglang.srt.base_types import is_abort
from sglang.srt.env import envs
from sglang.srt.managers.io_struct import BadRequestError, GenerateReqInput
from sglang.version import __version__

LOAD_SECTIONS = ("core", "disagg", "queues", "all")


def _unavailable(message: str) -> JSONResponse:
    from sglang.srt.entrypoints.http_server import error_response

    return error_response(message, 503)


def _one_load(tm: Any, st: dict[str, Any], include: set[str]) -> dict[str, Any]:
    """One DP rank's entry of GET /v1/loads, from its scheduler's state."""
    pool = st["kv_pool"]
    pd = st.get("disaggregation", {})
    queued = sum(v for k, v in pd.items() if k.endswith("_queue") and isinstance(v, int))
    used = pool["used_by_requests_pages"] * pool["page_size"]
    cap = pool["max_total_num_tokens"]
    running, waiting = st["num_running_reqs"], st["num_waiting_reqs"] + queued
    load: dict[str, Any] = {
        "dp_rank": st.get("dp_rank", 0),
        "num_running_reqs": running,
        "num_waiting_reqs": waiting,
        "num_total_reqs": running + waiting,
        "num_used_tokens": used,
        "num_total_tokens": used,
        "max_total_num_tokens": cap,
        "token_usage": round(used / cap, 4) if cap else 0.0,
        "max_running_requests": tm.scheduler_info.get("max_running_requests"),
    }
    if include & {"disagg", "all"} and pd:
        load["disaggregation"] = pd
    if include & {"queues", "all"}:
        load["queues"] = {"waiting": st["num_waiting_reqs"],
                          **{k: v for k, v in pd.items() if k.endswith("_queue")}}
    return load


def v1_loads_body(tm: Any, states: list[dict[str, Any]], include: set[str],
                  dp_size: int = 1) -> dict[str, Any]:
    """SGLang's GET /v1/loads answer from the schedulers' states (every DP rank, or the one
    asked for); ``dp_size``: how many the server has."""
    loads = [_one_load(tm, st, include) for st in states]
    total = lambda k: sum(ld[k] for ld in loads)  # noqa: E731
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": __version__,
        "dp_rank_count": dp_size,
        "loads": loads,
        "aggregate": {
            "total_running_reqs": total("num_running_reqs"),
            "total_waiting_reqs": total("num_waiting_reqs"),
            "total_reqs": total("num_total_reqs"),
            "total_used_tokens": total("num_used_tokens"),
            "total_tokens": total("num_total_tokens"),
            "avg_token_usage": round(total("token_usage") / len(loads), 4) if loads else 0.0,
        },
    }


def _parse_include(request: Request) -> set[str]:
    raw = request.query_params.get("include")
    if raw is None:
        return {"all"}
    parts = {p.strip() for p in raw.split(",") if p.strip()}
    bad = parts - set(LOAD_SECTIONS)
    if bad:
        raise BadRequestError(f"include: unknown section(s) {sorted(bad)}; "
                              f"use a comma-separated subset of {', '.join(LOAD_SECTIONS)}")
    return parts


def register_admin_routes(app: FastAPI, tm: Any, state: Any) -> None:
    from sglang.srt.entrypoints.http_server import JSON, read_json

    async def _from_scheduler(ask: Any) -> Any:
        """``ask()``'s answer as JSON, or 503 when the scheduler does not answer."""
        try:
            return JSON(await ask())
        except (RuntimeError, asyncio.TimeoutError) as e:
            return _unavailable(f"the scheduler did not answer: {e or 'timeout'}")

    @app.get("/health")
    async def health() -> Response:
        if not state.ready:
            return Response(status_code=503)
        ok = await tm.scheduler_responds(envs.health_check_timeout)
        return Response(status_code=200 if ok else 503)

    @app.get("/ready")
    async def ready() -> Response:
        if not state.ready or tm.scheduler_dead:
            return Response("starting\n" if not state.ready else "scheduler gone\n", 503)
        return Response("ready\n", 200)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        try:
            if tm.server_args.disaggregation_mode != "null":
                # A PD server cannot run a request alone: check that the schedulers answer.
                await tm.rpc_all("get_info", timeout=envs.health_check_timeout)
                return Response(status_code=200)
            obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1})

            async def run() -> Any:
                last = None
                async for last in tm.generate_request(obj.normalize()[0], None):
                    pass
                return last

            out = await asyncio.wait_for(run(), envs.health_check_timeout)
        except (RuntimeError, asyncio.TimeoutError):
            return Response(status_code=503)
        fr = (out or {}).get("meta_info", {}).get("finish_reason") or {}
        return Response(status_code=503 if is_abort(fr) else 200)

    @app.get("/model_info")
    @app.get("/get_model_info")
    async def model_info() -> Any:
        return tm.model_info()

    @app.get("/server_info")
    @app.get("/get_server_info")
    async def server_info() -> Any:
        return await _from_scheduler(tm.get_server_info)

    @app.get("/get_load")
    async def get_load() -> Any:
        return await _from_scheduler(tm.get_load)

    @app.get("/v1/loads")
    async def v1_loads(request: Request) -> Any:
        include = _parse_include(request)
        rank, n = request.query_params.get("dp_rank"), tm.dp.dp_size
        if rank is not None and not (rank.isascii() and rank.isdigit() and int(rank) < n):
            raise BadRequestError(f"dp_rank must be an integer in [0, {n}) (this server's "
                                  f"--dp-size {n}), got {rank!r:.40}")
        fmt = request.query_params.get("format", "json")
        if fmt != "json":
            raise BadRequestError(f"format: only 'json' is served here, got {fmt!r}; "
                                  "Prometheus metrics are on /metrics (--enable-metrics)")
        try:
            states = await tm.internal_states(envs.health_check_timeout)
        except (RuntimeError, asyncio.TimeoutError) as e:
            return _unavailable(f"the scheduler did not answer: {e or 'timeout'}")
        if rank is not None:
            states = [states[int(rank)]]
        return JSON(v1_loads_body(tm, states, include, n))

    @app.get("/v1/models/{model:path}")
    async def v1_model(model: str) -> Response:
        from sglang.srt.entrypoints.openai.protocol import error_body
        from sglang.srt.entrypoints.openai.routes import models_body

        card = models_body(tm)["data"][0]
        if model != card["id"]:
            body = error_body(f"The model '{model}' does not exist; this server serves "
                              f"'{card['id']}'", 404)
            body["error"]["param"] = "model"
            return JSONResponse(body, status_code=404)
        return JSONResponse(card)

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache() -> Response:
        ok = await tm.flush_cache()
        return Response(
            "Cache flushed.\n" if ok else "Cache not flushed: requests are running.\n",
            status_code=200 if ok else 400,
        )

    @app.post("/abort_request")
    async def abort_request(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequestError("abort_request needs a JSON object: {'rid': str} or "
                                  "{'abort_all': true}")
        rid, abort_all = body.get("rid"), body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise BadRequestError(f"abort_all must be a boolean, got {abort_all!r}")
        if abort_all:
            if rid not in (None, ""):
                raise BadRequestError("give either rid or abort_all, not both")
            tm.abort_request("")
            return Response(status_code=200)
        if not isinstance(rid, str) or not rid:
            raise BadRequestError("abort_request needs {'rid': str} (a non-empty request id) "
                                  "or {'abort_all': true}")
        tm.abort_request(rid)
        return Response(status_code=200)

