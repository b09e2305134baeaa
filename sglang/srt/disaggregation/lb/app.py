"""mini_lb's aiohttp application: the generation routes and the fan-out control routes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

import aiohttp
from aiohttp import web

from sglang.srt.disaggregation.lb.args import LBArgs, normalize_url, parse_args
from sglang.srt.disaggregation.lb.health import HealthChecker, Workers
from sglang.srt.disaggregation.lb.pool import Prefill, ServerPool
from sglang.srt.disaggregation.lb.proxy import LegError, Proxy, Reply, error_response
from sglang.srt.disaggregation.lb.route import json_body, route
from sglang.srt.utils.network import advertised_url, is_wildcard

logger = logging.getLogger("sglang.mini_lb")
POOL = web.AppKey("pool", ServerPool)
PROXY = web.AppKey("proxy", Proxy)
ATTEMPTS = web.AppKey("attempts", int)


def _relay(reply: Reply) -> web.Response:
    return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type)


async def fetch_load(proxy: Proxy, url: str) -> Optional[float]:
    """Requests on a server by its ``GET /get_load`` (``num_reqs``, summed over DP ranks); None
    when it does not answer that within 2 s (power_of_two then counts its own in flight)."""
    assert proxy.session is not None
    try:
        async with proxy.session.get(f"{url}/get_load",
                                     timeout=aiohttp.ClientTimeout(total=2)) as resp:  # fmt: skip
            loads = await resp.json(content_type=None) if resp.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None
    loads = loads if isinstance(loads, list) else [loads]
    nums = [x.get("num_reqs") for x in loads if isinstance(x, dict)]
    if not nums or not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in nums):
        return None
    return float(sum(nums))


async def _generate(request: web.Request, endpoint: str) -> web.StreamResponse:
    proxy = request.app[PROXY]
    return await route(request, endpoint, request.app[POOL], proxy, request.app[ATTEMPTS],
                       lambda url: fetch_load(proxy, url), getattr(proxy, "on_retry", None))


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "generate")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "v1/completions")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, "v1/chat/completions")


async def _fanout(
    request: web.Request, method: str, path: str
) -> tuple[dict[str, list[Any]], list[str]]:
    """Call every server; their JSON (or text) answers by role, and the failures."""
    pool, proxy = request.app[POOL], request.app[PROXY]
    roles = [("prefill", p.url) for p in pool.prefills] + [("decode", d) for d in pool.decodes]

    async def one(role: str, url: str) -> tuple[Any, Optional[str]]:
        try:
            reply = await proxy.call(method, f"{url}{path}", role)
        except LegError as e:
            return {"url": url, "error": e.message}, e.message
        try:
            answer = json.loads(reply.body) if reply.body else None
        except ValueError:
            answer = reply.body.decode("utf-8", "replace")
        if reply.status >= 400:
            msg = f"{role} {url} answered {path} with {reply.status}"
            return {"url": url, "error": msg, "body": answer}, msg
        return answer, None

    results = await asyncio.gather(*(one(r, u) for r, u in roles))
    out: dict[str, list[Any]] = {"prefill": [], "decode": []}
    for (role, _), (answer, _) in zip(roles, results):
        out[role].append(answer)
    return out, [err for _, err in results if err]


async def health(request: web.Request) -> web.Response:
    return web.Response(text="OK")


async def workers(request: web.Request) -> web.Response:
    """Every server's health-check and circuit-breaker state, by role."""
    return web.json_response(request.app[POOL].workers.describe())


async def health_generate(request: web.Request) -> web.Response:
    _, failures = await _fanout(request, "GET", "/health_generate")
    if failures:
        return error_response("; ".join(failures), 503)
    return web.Response(text="OK")


async def flush_cache(request: web.Request) -> web.Response:
    _, failures = await _fanout(request, "POST", "/flush_cache")
    if failures:
        return error_response("; ".join(failures), 503)
    return web.Response(text="Cache flushed on every prefill and decode server")


async def get_server_info(request: web.Request) -> web.Response:
    infos, _ = await _fanout(request, "GET", "/get_server_info")
    states = []
    for info in infos["decode"]:
        if isinstance(info, dict):
            states.extend(info.get("internal_states") or [])
    infos["internal_states"] = states  # what bench_one_batch_server reads
    return web.json_response(infos)


async def _to_first_prefill(request: web.Request, path: str) -> web.Response:
    pool, proxy = request.app[POOL], request.app[PROXY]
    if not pool.prefills:
        return error_response("no prefill server registered", 503)
    live = [p for p in pool.prefills if pool.workers.available(p.url)] or pool.prefills
    try:
        return _relay(await proxy.call("GET", f"{live[0].url}{path}", "prefill"))
    except LegError as e:
        return error_response(e.message, e.status)


async def models(request: web.Request) -> web.Response:
    return await _to_first_prefill(request, "/v1/models")


async def model_info(request: web.Request) -> web.Response:
    """/model_info and /get_model_info: the first prefill's /model_info, as SGLang's MiniLB (its
    older name where a server lacks the new one)."""
    reply = await _to_first_prefill(request, "/model_info")
    if reply.status == 404:
        return await _to_first_prefill(request, "/get_model_info")
    return reply


async def register(request: web.Request) -> web.Response:
    """Body {"mode": "prefill"|"decode", "registry_url": URL, "bootstrap_port": int|null}."""
    try:
        body = await json_body(request)
    except LegError as e:
        return error_response(e.message, e.status)
    mode = body.get("mode") if isinstance(body, dict) else None
    url = body.get("registry_url") if isinstance(body, dict) else None
    port = body.get("bootstrap_port") if isinstance(body, dict) else None
    if mode not in ("prefill", "decode") or not isinstance(url, str) or not url:
        return error_response("body must be {mode: prefill|decode, registry_url: URL, "
                              "bootstrap_port: int|null}", 400)  # fmt: skip
    if port is not None and not isinstance(port, int):
        return error_response("bootstrap_port must be an integer or null", 400)
    pool = request.app[POOL]
    added = pool.register(mode, normalize_url(url), port)
    logger.info("register %s %s (bootstrap port %s): %s", mode, url, port,
                "added" if added else "already known")  # fmt: skip
    return web.json_response(
        {"added": added, "prefill": [p.url for p in pool.prefills], "decode": pool.decodes}
    )


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """An unknown route or method is a JSON error naming it, as the servers' are."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(f"{request.method} {request.path}: {e.reason}", e.status)


def build_app(args: LBArgs) -> web.Application:
    app = web.Application(client_max_size=1 << 30, middlewares=[json_errors])
    prefills = [Prefill(u, p) for u, p in zip(args.prefill_urls, args.prefill_bootstrap_ports)]
    states = Workers(args.health, args.breaker)
    app[POOL] = pool = ServerPool(prefills, args.decode_urls, args.policy, workers=states)
    app[ATTEMPTS] = args.max_attempts
    from sglang.srt.disaggregation.lb.metrics import create_lb_metrics

    metrics = create_lb_metrics(args)  # --enable-metrics; None without
    app[PROXY] = proxy = metrics.proxy(args.timeout, pool) if metrics else Proxy(args.timeout)
    proxy.report = states.record_request
    checker = HealthChecker(states)

    async def lifecycle(app: web.Application) -> Any:
        await proxy.start()
        assert proxy.session is not None
        checker.start(proxy.session)
        yield
        await checker.stop()
        await proxy.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/generate", generate)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/workers", workers)
    app.router.add_get("/health_generate", health_generate)
    app.router.add_get("/get_server_info", get_server_info)
    app.router.add_get("/server_info", get_server_info)
    app.router.add_get("/get_model_info", model_info)
    app.router.add_get("/model_info", model_info)
    app.router.add_post("/flush_cache", flush_cache)
    app.router.add_post("/register", register)
    if metrics is not None:
        metrics.install(app)  # GET /metrics and the request counters
    return app


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="[%(asctime)s] %(name)s %(levelname)s: %(message)s"
    )
    logger.info("mini_lb: %d prefill, %d decode, policy %s", len(args.prefill_urls),
                len(args.decode_urls), args.policy)  # fmt: skip
    for url, port in zip(args.prefill_urls, args.prefill_bootstrap_ports):
        logger.info("prefill %s (bootstrap port %s)", url, port)
    for url in args.decode_urls:
        logger.info("decode %s", url)
    logger.info("health checks: %s; circuit breaker: %s; attempts per request: %d",
                args.health, args.breaker, args.max_attempts)  # fmt: skip
    web.run_app(
        build_app(args), host=args.host, port=args.port, handler_cancellation=True,
        access_log=None, print=lambda *_: logger.info(
            "listening on %s:%d%s", args.host, args.port,
            f" (reach it at {advertised_url(args.host, args.port)})"
            if is_wildcard(args.host) else ""),
    )  # fmt: skip
