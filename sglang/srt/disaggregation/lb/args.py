"""mini_lb command line: SGLang's mini_lb flags, and sglang-router's PD command line.

The router's form works as is: ``--pd-disaggregation --prefill URL [PORT] --prefill URL [PORT]
--decode URL --decode URL --policy P --host H --port N``. With ``--pd-disaggregation`` a prefill
given without a port gets none (``bootstrap_port: null``), as the router sends it, and the decode
then uses its own ``--disaggregation-bootstrap-port``; without it, SGLang's mini_lb default 8998.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

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
    p.add_argument("--timeout", type=float, default=600.0,
                   help="seconds to wait on a server (non-stream total; stream per read)")
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
    return args
