"""mini_lb command line: SGLang's mini_lb flags, and sglang-router's PD command line.

The router's form works as is: ``--pd-disaggregation --prefill URL [PORT] --prefill URL [PORT]
--decode URL --decode URL --policy P --host H --port N``. With ``--pd-disaggregation`` a prefill
given without a port gets none (``bootstrap_port: null``), as the router sends it, and the decode
then uses its own ``--disaggregation-bootstrap-port``; without it, SGLang's mini_lb default 8998.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Optional

from sglang.srt.disaggregation.lb.health import BreakerConfig, HealthConfig
from sglang.srt.disaggregation.lb.policy import POLICIES
from sglang.srt.utils.network import DEFAULT_BOOTSTRAP_PORT


@dataclass
class LBArgs:
    prefill_urls: list[str] = field(default_factory=list)
    decode_urls: list[str] = field(default_factory=list)
    prefill_bootstrap_ports: list[Optional[int]] = field(default_factory=list)
    host: str = "0.0.0.0"
    port: int = 8000
    timeout: float = 600.0
    log_level: str = "info"
    policy: str = "round_robin"
    enable_metrics: bool = False  # GET /metrics (lb/metrics.py)
    health: HealthConfig = field(default_factory=HealthConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    max_attempts: int = 2  # --retry-max-retries: attempts in all, the first included


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def _port(token: str) -> Optional[int]:
    return None if token.lower() == "none" else int(token)


def _is_port(token: str) -> bool:
    return token.isdigit() or token.lower() == "none"


def split_urls_and_ports(tokens: list[str]) -> tuple[list[str], list[Optional[int] | str]]:
    """``URL [PORT] URL [PORT] ...`` -> urls and per-url ports ("unset" where none follows)."""
    urls: list[str] = []
    ports: list[Optional[int] | str] = []
    for tok in tokens:
        if _is_port(tok):
            if not urls or ports[-1] != "unset":
                raise ValueError(f"--prefill: port {tok} does not follow a URL")
            ports[-1] = _port(tok)
        else:
            urls.append(normalize_url(tok))
            ports.append("unset")
    return urls, ports


def resolve_bootstrap_ports(
    n_prefill: int, given: Optional[list[Optional[int]]],
    default: Optional[int] = DEFAULT_BOOTSTRAP_PORT,
) -> list[Optional[int]]:  # fmt: skip
    """One value is broadcast to every prefill; otherwise there must be one per prefill."""
    if not given:
        return [default] * n_prefill
    if len(given) == 1:
        return list(given) * n_prefill
    if len(given) != n_prefill:
        raise ValueError(
            f"--prefill-bootstrap-ports has {len(given)} values for {n_prefill} prefill servers; "
            "give one value (used for all) or one per --prefill URL"
        )
    return list(given)


def parse_args(argv: Optional[list[str]] = None) -> LBArgs:
    p = argparse.ArgumentParser(
        prog="python -m sglang.srt.disaggregation.mini_lb",
        description="Prefill/decode load balancer; also takes sglang-router's PD command line",
    )
    p.add_argument("--pd-disaggregation", action="store_true",
                   help="accepted for sglang-router's command line (PD is mini_lb's only mode); "
                   "a --prefill without a port then gets none (the decode uses its own)")
    p.add_argument("--prefill", nargs="+", action="append", required=True, metavar="URL",
                   help="prefill server URLs; a URL may be followed by its bootstrap port")
    p.add_argument("--decode", nargs="+", action="append", required=True, metavar="URL",
                   help="decode server URLs (one flag per URL, or several after one flag)")
    p.add_argument("--policy", choices=POLICIES, default="round_robin",
                   help="how a (prefill, decode) pair is picked, sglang-router's names "
                   "(default round_robin)")
    p.add_argument("--prefill-bootstrap-ports", nargs="+", type=_port, default=None,
                   metavar="PORT", help=f"one for all prefills or one each (default "
                   f"{DEFAULT_BOOTSTRAP_PORT}); 'none' for no port")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--timeout", "--request-timeout-secs", dest="timeout", type=float,
                   default=600.0, help="seconds to wait on a server (non-stream total; stream "
                   "per read); past it the client gets 504")
    _resilience_args(p)
    p.add_argument("--log-level", default="info")
    p.add_argument("--enable-metrics", action="store_true",
                   help="serve Prometheus metrics (sgl_router_* names) on /metrics")
    ns = p.parse_args(argv)  # fmt: skip
    try:
        urls, inline = split_urls_and_ports([t for group in ns.prefill for t in group])
        default = None if ns.pd_disaggregation else DEFAULT_BOOTSTRAP_PORT
        ports = resolve_bootstrap_ports(len(urls), ns.prefill_bootstrap_ports, default)
    except ValueError as e:
        p.error(str(e))
    ports = [port if own == "unset" else own for port, own in zip(ports, inline)]
    decode = [normalize_url(u) for group in ns.decode for u in group]
    args = LBArgs(urls, decode, ports, ns.host, ns.port, ns.timeout,  # type: ignore[arg-type]
                  ns.log_level, ns.policy)  # fmt: skip
    args.enable_metrics = ns.enable_metrics
    args.health = HealthConfig(ns.health_check_interval_secs, ns.health_check_timeout_secs,
                               ns.health_failure_threshold, ns.health_success_threshold,
                               ns.health_check_endpoint, not ns.disable_health_check)
    args.breaker = BreakerConfig(ns.cb_failure_threshold, ns.cb_success_threshold,
                                 ns.cb_timeout_duration_secs, not ns.disable_circuit_breaker)
    args.max_attempts = 1 if ns.disable_retries else ns.retry_max_retries
    return args


def _positive(kind: type) -> Any:
    def conv(token: str) -> Any:
        value = kind(token)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {token}")
        return value

    return conv


def _resilience_args(p: argparse.ArgumentParser) -> None:
    """sglang-router's health-check, circuit-breaker and retry flags (its names and defaults,
    but 2 attempts: a failed request is retried once)."""
    h, cb, r = HealthConfig(), BreakerConfig(), LBArgs()
    p.add_argument("--health-check-interval-secs", type=_positive(float), default=h.interval,
                   help="seconds between health checks of every server")
    p.add_argument("--health-check-timeout-secs", type=_positive(float), default=h.timeout)
    p.add_argument("--health-failure-threshold", type=_positive(int),
                   default=h.failure_threshold, help="failed checks in a row: out of rotation")
    p.add_argument("--health-success-threshold", type=_positive(int),
                   default=h.success_threshold, help="good checks in a row: back in rotation")
    p.add_argument("--health-check-endpoint", default=h.endpoint)
    p.add_argument("--disable-health-check", action="store_true")
    p.add_argument("--cb-failure-threshold", type=_positive(int), default=cb.failure_threshold,
                   help="failed requests in a row that open a server's circuit breaker")
    p.add_argument("--cb-success-threshold", type=_positive(int), default=cb.success_threshold,
                   help="good requests in a row that close a half-open breaker")
    p.add_argument("--cb-timeout-duration-secs", type=_positive(float), default=cb.timeout,
                   help="seconds an open breaker waits before it lets a trial request through")
    p.add_argument("--disable-circuit-breaker", action="store_true")
    p.add_argument("--retry-max-retries", type=_positive(int), default=r.max_attempts,
                   help="attempts per request in all (1: no retry); a request is retried on "
                   "another (prefill, decode) pair only before anything was streamed")
    p.add_argument("--disable-retries", action="store_true", help="as --retry-max-retries 1")
