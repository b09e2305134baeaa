"""Which network devices NIXL's UCX backend may use, from the server's --host.

UCX's TCP transport listens on one address per network interface it uses (the interface's own
address, e.g. 127.0.0.1 for ``lo`` and the VM's address for ``eth0``), and by default it uses
every interface: a server bound to one address would still accept UCX connections, and put
addresses into its agent metadata, on all of them. UCX has no option naming an address, only
interfaces (``UCX_NET_DEVICES``; NIXL's ``device_list`` backend parameter appends ``:1`` to each
name, so it names only RDMA ports, and its ``ucx_devices`` does not reach UCX). So for a --host
naming an address, UCX is given the interface holding that address (``lo`` for any 127.x
address: then its TCP listener is on 127.0.0.1, the one address ``lo`` has) plus every RDMA port
(RDMA is not restricted: excluding the NICs would silently fall back to TCP). A wildcard --host
means every interface, and a user's own UCX_NET_DEVICES always wins (``all`` restores UCX's
default). The variable is set only while the backend is created (UCX reads it then), so the
process environment, and the servers a test process launches, do not inherit it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import threading
from typing import Iterator, Optional

import psutil

from sglang.srt.utils.network import is_wildcard

logger = logging.getLogger(__name__)

ENV = "UCX_NET_DEVICES"
IB_SYSFS = "/sys/class/infiniband"
_env_lock = threading.Lock()


def _addresses(host: str) -> list[ipaddress._BaseAddress]:
    host = host.strip("[]")
    try:
        return [ipaddress.ip_address(host.split("%")[0])]
    except ValueError:
        pass
    try:  # a name: every address it resolves to
        infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
    except OSError:
        return []
    return [ipaddress.ip_address(str(i[4][0]).split("%")[0]) for i in infos]


def interface_of(host: str) -> Optional[str]:
    """The network interface holding ``host``'s address: the one it is assigned to, else the
    one whose subnet holds it (127.0.0.3: ``lo``, which owns 127.0.0.0/8); None if none."""
    wanted = _addresses(host)
    nets = []
    for name, addrs in psutil.net_if_addrs().items():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6) or not a.netmask:
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if ip in wanted:
                return name
            bits = bin(int(ipaddress.ip_address(a.netmask.split("/")[0]))).count("1")
            nets.append((name, ipaddress.ip_network(f"{ip}/{bits}", strict=False)))
    for addr in wanted:
        for name, net in nets:
            if addr.is_loopback and addr in net:  # only lo routes a whole subnet to itself
                return name
    return None


def rdma_ports() -> list[str]:
    """Every RDMA port as UCX names it (``mlx5_0:1``)."""
    out = []
    try:
        devices = sorted(os.listdir(IB_SYSFS))
    except OSError:
        return out
    for dev in devices:
        try:
            out += [f"{dev}:{p}" for p in sorted(os.listdir(f"{IB_SYSFS}/{dev}/ports"))]
        except OSError:
            continue
    return out


def net_devices(host: Optional[str]) -> Optional[str]:
    """UCX_NET_DEVICES for a server bound to ``host``; None: leave UCX alone (a wildcard, a
    user's own setting, or an address no interface holds)."""
    if is_wildcard(host) or os.environ.get(ENV):
        return None
    iface = interface_of(str(host))
    if iface is None:
        logger.warning("NIXL: no network interface holds --host %s; UCX uses every one", host)
        return None
    return ",".join([iface, *rdma_ports()])


@contextlib.contextmanager
def restricted_to(host: Optional[str]) -> Iterator[Optional[str]]:
    """UCX_NET_DEVICES set for ``host`` (``net_devices``) inside the block only; yields it."""
    with _env_lock:
        devices = net_devices(host)
        if devices is None:
            yield None
            return
        os.environ[ENV] = devices
        try:
            logger.info("NIXL: UCX network devices %s (the interface holding --host %s; set %s "
                        "to override)", devices, host, ENV)
            yield devices
        finally:
            os.environ.pop(ENV, None)
