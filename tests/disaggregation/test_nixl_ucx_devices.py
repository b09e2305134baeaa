"""``nixl/ucx_devices.py``: which interface holds a --host address (pure logic over this machine's
real interfaces), the UCX_NET_DEVICES value built from it, set only while a NIXL agent is
created; then a real NIXL agent for 127.0.0.3: UCX's TCP listeners on ``lo``'s address only,
and its agent metadata (what a decode sends its prefill) names no other interface's address."""

from __future__ import annotations

import ipaddress
import os
import socket

import psutil
import pytest

from sglang.srt.disaggregation.nixl import ucx_devices
from sglang.srt.disaggregation.nixl.ucx_devices import ENV, interface_of, net_devices


def _ifaces() -> dict[str, set[str]]:
    return {n: {a.address.split("%")[0] for a in addrs
                if a.family in (socket.AF_INET, socket.AF_INET6)}
            for n, addrs in psutil.net_if_addrs().items()}


LOOPBACK = next(n for n, a in _ifaces().items() if "127.0.0.1" in a)
# this machine's other addresses (none on a machine with only lo: those checks are then empty)
OTHERS = {n: {a for a in addrs if not a.startswith("fe80:")}
          for n, addrs in _ifaces().items() if n != LOOPBACK}


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def test_each_address_maps_to_its_interface():
    for host in ("127.0.0.1", "127.0.0.3", "[::1]", "localhost"):
        assert interface_of(host) == LOOPBACK, host
    for name, addrs in OTHERS.items():
        for a in addrs:
            assert interface_of(a) == name, (a, name)
    assert interface_of("203.0.113.77") is None  # TEST-NET-3: on no interface here
    assert interface_of("no-such-host.invalid") is None


def test_the_devices_value(monkeypatch, tmp_path):
    assert net_devices("127.0.0.3") == LOOPBACK
    for wildcard in (None, "", "0.0.0.0", "::"):
        assert net_devices(wildcard) is None  # every interface, as --host says
    assert net_devices("203.0.113.77") is None  # nothing to restrict to: UCX's own choice
    for dev, ports in (("mlx5_0", ["1"]), ("mlx5_1", ["1", "2"])):
        for p in ports:
            (tmp_path / dev / "ports" / p).mkdir(parents=True)
    monkeypatch.setattr(ucx_devices, "IB_SYSFS", str(tmp_path))
    assert net_devices("127.0.0.3") == f"{LOOPBACK},mlx5_0:1,mlx5_1:1,mlx5_1:2"  # RDMA kept
    monkeypatch.setenv(ENV, "eth9")
    assert net_devices("127.0.0.3") is None  # the user's setting wins


def test_the_variable_is_set_only_inside_the_block():
    with ucx_devices.restricted_to("127.0.0.3") as devices:
        assert devices == os.environ[ENV] == LOOPBACK
    assert ENV not in os.environ
    with ucx_devices.restricted_to("0.0.0.0") as devices:
        assert devices is None and ENV not in os.environ


def _packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


# a real agent in a child process: NIXL's teardown at interpreter exit can crash the process
# (SIGSEGV after the tests passed: pytest's exit code would be 139), so the child leaves with
# os._exit once it has printed what it saw
AGENT_CHILD = """
import json, os, sys
import psutil
from sglang.srt.disaggregation.nixl.agent import NixlAgent
me = psutil.Process()
def listeners():
    return {(c.laddr.ip, c.laddr.port) for c in me.net_connections("inet")
            if c.status == psutil.CONN_LISTEN}
before = listeners()
agent = NixlAgent("ucx-devices-test", "UCX", "127.0.0.3")
out = {"net_devices": agent.net_devices, "env_left": "UCX_NET_DEVICES" in os.environ,
       "listeners": sorted(ip for ip, _ in listeners() - before),
       "metadata": agent.metadata().hex()}
agent.close()
print(json.dumps(out), flush=True)
os._exit(0)
"""


def test_a_real_agent_listens_and_advertises_only_on_the_hosts_interface():
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != ENV}
    r = subprocess.run([sys.executable, "-c", AGENT_CHILD], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["net_devices"] == LOOPBACK and not seen["env_left"], seen["net_devices"]
    assert seen["listeners"] and set(seen["listeners"]) <= _ifaces()[LOOPBACK], seen["listeners"]
    metadata = bytes.fromhex(seen["metadata"])
    for name, addrs in OTHERS.items():
        for a in addrs:
            assert _packed(a) not in metadata, (name, a)
