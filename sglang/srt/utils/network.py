"""The one place for ports and host formatting: the default bootstrap port, loopback for a
wildcard bind address, IPv6 brackets, and a free local port."""

from __future__ import annotations

import socket
from typing import Optional

# SGLang's default --disaggregation-bootstrap-port (prefill servers, mini_lb, the KV receivers).
DEFAULT_BOOTSTRAP_PORT = 8998
LOOPBACK = "127.0.0.1"
# Bind addresses meaning "this machine" that a peer cannot dial as they are.
_THIS_MACHINE = ("", "0.0.0.0", "::", "[::]", "localhost")


def reachable_host(host: Optional[str]) -> str:
    """The address to dial for a server bound to ``host``: a wildcard (or none) -> loopback."""
    return LOOPBACK if host is None or host in _THIS_MACHINE else host


def bracket_host(host: str) -> str:
    """``host`` as it goes before ``:port`` in an address or URL: an IPv6 literal in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def url_host(host: Optional[str]) -> str:
    """Host part of a URL to reach a server bound to ``host``."""
    return bracket_host(reachable_host(host))


def host_port(host: Optional[str], port: Optional[int]) -> str:
    """``host:port`` to reach ``host``; no port -> the default bootstrap port."""
    return f"{url_host(host)}:{DEFAULT_BOOTSTRAP_PORT if port is None else port}"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])
