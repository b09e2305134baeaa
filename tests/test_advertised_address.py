"""The address a server tells its peers (``utils.network.advertised_host``, SGLang's
``get_local_ip_auto`` for a wildcard) and where it binds (``bind_host``): pure logic, with the
machine's routes and hostname replaced where a test needs a given answer; then a PD manager's
real ZMQ control socket, bound where --host says and named by the advertised address."""

from __future__ import annotations

import logging
import queue
import socket

import psutil
import pytest

from sglang.srt.disaggregation.common.control_plane import ControlPlane
from sglang.srt.disaggregation.common.messages import PingMsg
from sglang.srt.utils import network
from sglang.srt.utils.network import (
    advertised_host,
    advertised_url,
    bind_host,
    get_local_ip_auto,
    reachable_host,
)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("SGLANG_HOST_IP", raising=False)
    monkeypatch.delenv("HOST_IP", raising=False)


def _routes(monkeypatch, route, hostname):
    monkeypatch.setattr(network, "route_ip", lambda: route)
    monkeypatch.setattr(network, "hostname_ip", lambda: hostname)


@pytest.mark.parametrize("host", ["127.0.0.3", "10.1.2.3", "fe80::1", "node7.example"])
def test_a_specific_host_is_advertised_as_it_is(monkeypatch, host):
    monkeypatch.setenv("SGLANG_HOST_IP", "10.9.9.9")  # only for wildcards
    assert advertised_host(host) == host
    assert bind_host(host) == host
    assert reachable_host(host) == host


def test_brackets_and_localhost(monkeypatch):
    _routes(monkeypatch, "10.0.0.5", None)
    assert advertised_host("[fe80::1]") == "fe80::1"
    assert advertised_url("[fe80::1]", 80) == "http://[fe80::1]:80"
    assert advertised_host("localhost") == bind_host("localhost") == "127.0.0.1"


@pytest.mark.parametrize("wildcard", [None, "", "0.0.0.0", "::", "[::]"])
def test_a_wildcard_advertises_the_default_routes_address(monkeypatch, wildcard):
    _routes(monkeypatch, "10.0.0.5", "10.0.0.6")
    assert advertised_host(wildcard) == "10.0.0.5"
    assert advertised_url(wildcard, 30000) == "http://10.0.0.5:30000"
    assert reachable_host(wildcard) == "127.0.0.1"  # dialing from this machine is another matter
    assert bind_host(wildcard) == ("::" if wildcard in ("::", "[::]") else "0.0.0.0")


def test_env_overrides_win_sglang_first(monkeypatch):
    _routes(monkeypatch, "10.0.0.5", "10.0.0.6")
    monkeypatch.setenv("HOST_IP", "192.168.7.7")
    assert advertised_host("0.0.0.0") == "192.168.7.7"
    monkeypatch.setenv("SGLANG_HOST_IP", "[fd00::7]")
    assert advertised_host("0.0.0.0") == "fd00::7"


def test_without_a_route_the_hostname_then_loopback_with_a_warning(monkeypatch, caplog):
    _routes(monkeypatch, None, "10.0.0.6")
    assert get_local_ip_auto() == "10.0.0.6"
    _routes(monkeypatch, None, None)
    with caplog.at_level(logging.WARNING, logger=network.__name__):
        assert advertised_host("0.0.0.0") == "127.0.0.1"
    assert "SGLANG_HOST_IP" in caplog.text and "cannot reach" in caplog.text


def test_hostname_resolving_to_loopback_is_skipped(monkeypatch):
    addrs = [(socket.AF_INET, 1, 6, "", ("127.0.1.1", 0)),
             (socket.AF_INET6, 1, 6, "", ("::1", 0, 0, 0)),
             (socket.AF_INET, 1, 6, "", ("10.4.4.4", 0))]
    monkeypatch.setattr(network.socket, "getaddrinfo", lambda *a, **k: addrs)
    assert network.hostname_ip() == "10.4.4.4"
    monkeypatch.setattr(network.socket, "getaddrinfo", lambda *a, **k: addrs[:2])
    assert network.hostname_ip() is None


def test_this_machines_answer_is_one_of_its_addresses():
    ip = get_local_ip_auto()  # the real routes and hostname
    own = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    assert ip in own
    if network.route_ip() is not None:
        assert not ip.startswith("127.")


def test_control_socket_binds_where_host_says_and_advertises_the_address():
    """A manager's ZMQ PULL socket: bound to --host (every interface for a wildcard), named by
    the advertised address in every message's ``peer``; a message sent there arrives."""
    got: queue.Queue = queue.Queue()
    wild = ControlPlane("127.0.0.2", got.put, bind="0.0.0.0")
    own = ControlPlane("127.0.0.3", got.put)  # bind: the advertised address itself
    try:
        assert wild.endpoint == f"127.0.0.2:{wild.port}" and own.endpoint.startswith("127.0.0.3:")
        mine = {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("inet")
                if c.status == psutil.CONN_LISTEN}
        assert {("0.0.0.0", wild.port), ("127.0.0.3", own.port)} <= mine
        wild.start()
        own.start()
        assert own.send(wild.endpoint, PingMsg(own.endpoint))
        assert wild.send(own.endpoint, PingMsg(wild.endpoint))
        peers = {got.get(timeout=5).peer, got.get(timeout=5).peer}
        assert peers == {own.endpoint, wild.endpoint}
    finally:
        wild.close()
        own.close()
