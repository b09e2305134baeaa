"""HTTP side of the handshake: the prefill registers with its bootstrap server, the decode
fetches that registration and refuses a prefill whose KV layout differs from its own."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Optional

from sglang.srt.disaggregation.common.bootstrap_server import SECRET_HEADER
from sglang.srt.disaggregation.common.tp_layout import tp_problem
from sglang.srt.disaggregation.common.utils import http_host
from sglang.srt.env import envs

logger = logging.getLogger(__name__)


class PrefillUnavailable(RuntimeError):
    """The bootstrap server did not answer (yet): worth retrying. ``refused``: nothing listens
    on its port (connection refused), worth retrying only briefly."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class HandshakeRefused(RuntimeError):
    """The prefill answered, but cannot serve this decode: not worth retrying."""


def _url(addr: str, path: str) -> str:
    host, _, port = addr.rpartition(":")
    return f"http://{http_host(host)}:{port}{path}"


def register_prefill(addr: str, info: dict[str, Any], secret: str, attempts: int = 5) -> None:
    """PUT the prefill's info to its bootstrap server at ``addr`` with the server's secret
    (retrying with backoff up to 2 s apart, as the server may still be starting; a refusal is
    final)."""
    body = json.dumps(info).encode()
    delay = 0.1
    for i in range(attempts):
        req = urllib.request.Request(_url(addr, "/route"), data=body, method="PUT")
        req.add_header("Content-Type", "application/json")
        req.add_header(SECRET_HEADER, secret)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                r.read()
            return
        except urllib.error.HTTPError as e:
            raise RuntimeError(
                f"The bootstrap server at {addr} refused the registration: {e.code} "
                f"{e.read().decode(errors='replace')}"
            ) from e
        except (urllib.error.URLError, OSError) as e:
            if i == attempts - 1:
                raise RuntimeError(
                    f"Could not register with the bootstrap server at {addr}: {e}"
                ) from e
            time.sleep(delay)
            delay = min(2 * delay, 2.0)


def fetch_prefill_info(addr: str, engine_rank: int = 0, timeout: float = 3.0,
                       dp_rank: int = 0) -> dict[str, Any]:
    """GET /route once (the registration of DP replica ``dp_rank``'s ``engine_rank``).
    PrefillUnavailable if it is down or not registered yet."""
    query = f"engine_rank={engine_rank}" + (f"&dp_rank={dp_rank}" if dp_rank else "")
    try:
        with urllib.request.urlopen(_url(addr, f"/route?{query}"), timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise PrefillUnavailable(f"bootstrap server {addr} answered {e.code}") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        cause = e.reason if isinstance(e, urllib.error.URLError) else e
        raise PrefillUnavailable(f"bootstrap server {addr} unreachable: {e}",
                                 refused=isinstance(cause, ConnectionRefusedError)) from e


REFUSED_WINDOW = 1.0  # seconds a refused bootstrap port is retried (a restart in progress)


def fetch_with_retry(addr: str, rank: int, closing: threading.Event,
                     wanted: Callable[[], bool], dp_rank: int = 0) -> dict[str, Any]:
    """GET /route for ``rank`` (of DP replica ``dp_rank``), retried once a second while the prefill is starting (503,
    timeouts), until ``closing`` is set or nothing is ``wanted`` any more. A refused connection
    (nothing listens there) is retried only for REFUSED_WINDOW."""
    attempts = envs.bootstrap_fetch_attempts
    last: Exception | None = None
    start = time.monotonic()
    for i in range(attempts):
        try:
            return fetch_prefill_info(addr, rank, dp_rank=dp_rank)
        except PrefillUnavailable as e:
            last = e
            if e.refused and time.monotonic() - start >= REFUSED_WINDOW:
                raise PrefillUnavailable(
                    f"Could not fetch prefill info from {addr}: connection refused for "
                    f"{time.monotonic() - start:.1f}s ({e}); is the prefill server up and "
                    f"its --disaggregation-bootstrap-port right?", refused=True) from e
        pause = 0.2 if last is not None and getattr(last, "refused", False) else 1.0
        if i + 1 < attempts and closing.wait(pause):
            break  # shutting down
        if not wanted():
            break  # every request for it is gone
    raise PrefillUnavailable(
        f"Could not fetch prefill info from {addr} after {attempts} attempts ({last}); "
        f"is the prefill server up and its --disaggregation-bootstrap-port right?"
    )


def check_health(addr: str, timeout: float = 2.0) -> Optional[str]:
    """The bootstrap server's instance id if it is healthy ("" if it sent none), else None."""
    try:
        with urllib.request.urlopen(_url(addr, "/health"), timeout=timeout) as r:
            if r.status != 200:
                return None
            return r.headers.get("X-Bootstrap-Instance", "")
    except (urllib.error.URLError, OSError):
        return None


def handshake_problem(prefill: dict[str, Any], decode: dict[str, Any]) -> Optional[str]:
    """compat_problem, then (either side at tp > 1) whether the prefill's ranks can fill this
    decode rank's heads (tp_layout.tp_problem)."""
    problem = compat_problem(prefill, decode)
    if problem is None and (prefill.get("tp_size", 1) != 1 or decode.get("tp_size", 1) != 1):
        problem = tp_problem(prefill, decode)
    return problem


def compat_problem(prefill: dict[str, Any], decode: dict[str, Any]) -> Optional[str]:
    """The first difference that makes the prefill's KV unusable here, as a message naming
    both values and the fix; None if they match."""
    tp = (prefill.get("tp_size", 1), decode.get("tp_size", 1))
    sizes = "" if tp == (1, 1) else f" (prefill --tp-size {tp[0]}, decode --tp-size {tp[1]})"
    checks = [
        ("backend", "transfer backend", "--disaggregation-transfer-backend"),
        ("page_size", "page size", "--page-size"),
        # the pages move as stored bytes: both sides must store one dtype
        ("kv_dtype", "KV cache dtype", "--kv-cache-dtype (auto follows --dtype)"),
    ]
    for key, what, flag in checks:
        p, d = prefill.get(key), decode.get(key)
        if p != d:
            return (f"{what} differs: prefill {p}, decode {d}{sizes}; start both with the same "
                    f"{flag}")
    p_shape, d_shape = prefill.get("model_shape", {}), decode.get("model_shape", {})
    for key in ("num_layers", "num_kv_heads", "head_dim"):
        p, d = p_shape.get(key), d_shape.get(key)
        if p != d:
            return (
                f"model shape differs ({key}): prefill {p}, decode {d}{sizes}; serve the same "
                f"model on both (--model-path)"
            )
    p, d = prefill.get("num_kv_regions"), decode.get("num_kv_regions")
    if p != d:
        return f"number of KV regions differs: prefill {p}, decode {d}; serve the same model"
    if tp != (1, 1):
        return None  # the page bytes of different head shares: tp_layout.tp_problem checks
    p, d = prefill.get("kv_item_len"), decode.get("kv_item_len")
    if p != d:
        return f"KV page size in bytes differs: prefill {p}, decode {d}; serve the same model"
    return None
