"""The one place for ports and host formatting: the default bootstrap port, the address to dial
a server on this machine (``reachable_host``: loopback for a wildcard bind address), the address
a server tells its peers (``advertised_host``: this machine's routable IP for a wildcard, as
SGLang's ``get_local_ip_auto``), IPv6 brackets, and a free local port
(``free_port``: from below the ephemeral range, never the same twice in a process).

Dialing and advertising differ: a test or a launcher on the same machine may dial 127.0.0.1 for
a server bound to 0.0.0.0, but an address put into a registration, a control-plane endpoint or a
transfer engine's session id is dialed by peers on other hosts, so it must never be loopback
unless the server listens only there.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from typing import Optional, Tuple

from sglang.srt.env import envs

logger = logging.getLogger(__name__)

# SGLang's default --disaggregation-bootstrap-port (prefill servers, mini_lb, the KV receivers).
DEFAULT_BOOTSTRAP_PORT = 8998
LOOPBACK = "127.0.0.1"
# Bind addresses meaning "every interface".
WILDCARDS = ("", "0.0.0.0", "::", "[::]")
# Bind addresses meaning "this machine" that a peer cannot dial as they are.
_THIS_MACHINE = (*WILDCARDS, "localhost")
# Where a UDP socket "connects" to learn which local address the default route leaves from
# (SGLang's choice; connecting a UDP socket sends nothing).
_PROBES = ((socket.AF_INET, "8.8.8.8"), (socket.AF_INET6, "2001:4860:4860::8888"))


def reachable_host(host: Optional[str]) -> str:
    """The address to dial for a server bound to ``host``: a wildcard (or none) -> loopback."""
    return LOOPBACK if host is None or host in _THIS_MACHINE else host


def is_wildcard(host: Optional[str]) -> bool:
    return host is None or host in WILDCARDS


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "0.0.0.0", "::")


def route_ip() -> Optional[str]:
    """The local address of the interface the default route leaves from, or None."""
    for family, probe in _PROBES:
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 80))
                ip = s.getsockname()[0]
        except OSError:
            continue
        if ip and not _is_loopback(ip):
            return ip
    return None


def hostname_ip() -> Optional[str]:
    """A non-loopback address this machine's hostname resolves to, or None."""
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, 0, socket.SOCK_STREAM)
    except OSError:
        return None
    for info in infos:
        ip = str(info[4][0])
        if not _is_loopback(ip) and not ip.startswith("fe80:"):
            return ip
    return None


def get_local_ip_auto() -> str:
    """This machine's address for peers on other hosts (SGLang's ``get_local_ip_auto``):
    SGLANG_HOST_IP (or HOST_IP), else the address of the default route's interface, else a
    non-loopback address of the hostname, else 127.0.0.1 with a warning."""
    ip = envs.host_ip.strip("[]") or route_ip() or hostname_ip()
    if ip:
        return ip
    logger.warning(
        "No routable address found for this machine (no default route; hostname %r resolves "
        "only to loopback): advertising %s, which peers on other hosts cannot reach. Set "
        "SGLANG_HOST_IP or pass --host with this machine's address.", socket.gethostname(),
        LOOPBACK)
    return LOOPBACK


def advertised_host(host: Optional[str]) -> str:
    """The address a server bound to ``host`` tells its peers: exactly ``host`` when it names
    one (``localhost``: 127.0.0.1, brackets dropped), this machine's routable IP
    (``get_local_ip_auto``) for a wildcard."""
    if is_wildcard(host):
        return get_local_ip_auto()
    if host == "localhost":
        return LOOPBACK
    return str(host).strip("[]")


def bind_host(host: Optional[str]) -> str:
    """Where to bind a socket for a server whose --host is ``host``: every interface for a
    wildcard ("::" for an IPv6 one), else that address."""
    if is_wildcard(host):
        return "::" if host in ("::", "[::]") else "0.0.0.0"
    return advertised_host(host)


def bracket_host(host: str) -> str:
    """``host`` as it goes before ``:port`` in an address or URL: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def url_host(host: Optional[str]) -> str:
    """Host part of a URL to reach a server bound to ``host``."""
    return bracket_host(reachable_host(host))


def advertised_url(host: Optional[str], port: int) -> str:
    """``http://ADDRESS:PORT`` where peers and users reach a server bound to ``host``."""
    return f"http://{bracket_host(advertised_host(host))}:{port}"


def host_port(host: Optional[str], port: Optional[int]) -> str:
    """``host:port`` to reach ``host``; no port -> the default bootstrap port."""
    return f"{url_host(host)}:{DEFAULT_BOOTSTRAP_PORT if port is None else port}"


# free_port hands out ports from below the ephemeral range (where the OS picks the local port of
# every outgoing connection and port-0 bind: transfer engines, zmq, HTTP clients), so a port
# given to a server launched seconds later is not taken meanwhile by some connection.
_EPHEMERAL_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default, for machines without the /proc file
_MIN_WINDOW = 1000  # fewest ports worth a window; fewer -> let the OS pick (port 0)
_port_lock = threading.Lock()
_port_cursor: Optional[int] = None  # next candidate offset in the window; random at first use


def ephemeral_range() -> Tuple[int, int]:
    """The OS's ephemeral port range (inclusive), from /proc where present."""
    try:
        with open(_EPHEMERAL_FILE) as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL


def port_window(ephemeral: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Ports ``[start, end)`` for free_port, outside ``ephemeral`` (inclusive): 20000 up to its
    start, else 10000 up to it (at most 20000), else above its end; None when none of these
    holds _MIN_WINDOW ports."""
    lo, hi = ephemeral
    for start, end in ((20000, lo), (10000, min(lo, 20000)), (max(hi + 1, 10000), 65536)):
        if end - start >= _MIN_WINDOW:
            return start, end
    return None


def _binds(family: int, host: str, port: int) -> bool:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _reset_cursor() -> None:
    global _port_cursor
    _port_cursor = None


# A forked child would otherwise walk the same ports as its parent.
os.register_at_fork(after_in_child=_reset_cursor)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now, below the ephemeral range (see above) and never
    the same twice in this process: a cursor from a random offset walks the window and returns
    the first port that binds on ``host`` and on every interface (a server may bind either).
    If none binds, the OS picks one (port 0)."""
    global _port_cursor
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    host = host.strip("[]")
    everywhere = "::" if family == socket.AF_INET6 else "0.0.0.0"
    window = port_window(ephemeral_range())
    if window is not None:
        start, end = window
        with _port_lock:
            if _port_cursor is None:
                # not the global generator: a process that seeds it would start where others do
                _port_cursor = random.SystemRandom().randrange(end - start)
            for _ in range(end - start):
                port = start + _port_cursor % (end - start)
                _port_cursor = (_port_cursor + 1) % (end - start)
                if _binds(family, host, port) and _binds(family, everywhere, port):
                    return port
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
