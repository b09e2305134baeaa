"""``utils.network.free_port``: ports from below the OS's ephemeral range (where outgoing
connections and port-0 binds take theirs), never the same twice in a process, each bindable
when handed out; the OS's pick (port 0) when no window or no candidate is left. Pure logic
plus real binds on loopback."""

from __future__ import annotations

import os
import socket

import pytest

from sglang.srt.utils import network
from sglang.srt.utils.network import ephemeral_range, free_port, port_window


@pytest.mark.parametrize("ephemeral, window", [
    ((32768, 60999), (20000, 32768)),   # Linux's default
    ((49152, 65535), (20000, 49152)),   # IANA's (macOS, Windows)
    ((15000, 60999), (10000, 15000)),   # starts low: 10000 up to it
    ((25000, 60999), (20000, 25000)),
    ((1024, 60999), (61000, 65536)),    # starts lower still: above its end
    ((1024, 65535), None),              # no room anywhere: the OS picks
    ((10500, 65000), None),             # windows under 1000 ports are not worth it
])
def test_the_window_lies_outside_the_ephemeral_range(ephemeral, window):
    assert port_window(ephemeral) == window
    if window is not None:
        start, end = window
        assert end <= ephemeral[0] or start > ephemeral[1]


def test_two_hundred_ports_distinct_outside_the_ephemeral_range_and_bindable():
    lo, hi = ephemeral_range()
    start, end = port_window((lo, hi))
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    for port in ports:
        assert start <= port < end and not lo <= port <= hi
        with socket.socket() as s:  # nothing else took it since (the window is not the OS's)
            s.bind(("0.0.0.0", port))


def test_ipv6_host_and_a_specific_loopback_address():
    for host in ("127.0.0.2", "[::1]"):
        port = free_port(host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as s:
            s.bind((host.strip("[]"), port))


def test_a_port_in_use_is_skipped(monkeypatch):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        monkeypatch.setattr(network, "port_window", lambda _: (port - 2, port + 3))
        monkeypatch.setattr(network, "_port_cursor", 0)
        seen = [free_port() for _ in range(4)]
    assert sorted(seen) == [port - 2, port - 1, port + 1, port + 2]


def test_without_a_window_or_a_free_candidate_the_os_picks(monkeypatch):
    monkeypatch.setattr(network, "port_window", lambda _: None)
    lo, hi = ephemeral_range()
    assert lo <= free_port() <= hi
    monkeypatch.setattr(network, "port_window", lambda _: (20000, 21000))
    monkeypatch.setattr(network, "_binds", lambda *a: False)
    assert lo <= free_port() <= hi


def test_a_forked_child_starts_its_own_cursor():
    free_port()
    assert network._port_cursor is not None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its cursor, nothing else
        os.write(w, repr(network._port_cursor).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 64) == b"None"
    os.close(r)
