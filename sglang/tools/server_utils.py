"""Start real server processes on free loopback ports, wait for them, and stop them cleanly:
servers, PD clusters behind mini_lb, and either front (sglang-router or mini_lb, one command line)
in front of a cluster's workers.

Used by the tests (through ``sglang.test.server_utils``), the demo and the benchmarks; it lives
with the tools so that the demo need not import the test package.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import requests

from sglang.srt.utils.network import free_port


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    url: str
    log_path: str
    extra: dict = field(default_factory=dict)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 60) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def terminate(self) -> None:
        """SIGTERM to its process group, without waiting (``stop`` waits)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        self.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)

    def kill(self) -> None:
        """Hard kill (a crashed peer)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)


def spawn(name: str, argv: list[str], url: str, log_dir: str,
          env: Optional[dict] = None) -> Proc:  # fmt: skip
    """Start ``python ARGV`` in its own process group, its output to ``LOG_DIR/NAME.log``;
    ``wait_healthy`` then waits for it. Servers spawned together start in parallel."""
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, f"{name}.log")
    log = open(log_path, "w")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen(
        [sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, env=full_env,
        start_new_session=True,
    )
    return Proc(name, popen, url, log_path)


def wait_healthy(proc: Proc, health: str = "/health", timeout: float = 180) -> Proc:
    """``proc`` once ``GET url+health`` answers 200; stopped, and RuntimeError with its log's
    tail, if it exits first or ``timeout`` passes."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up:\n{proc.log_tail()}")
        try:
            if requests.get(proc.url + health, timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.1)  # every launch waits for this poll: a coarse one wastes its interval
    proc.stop()
    raise RuntimeError(f"{proc.name} did not become healthy in {timeout}s:\n{proc.log_tail()}")


def wait_all(procs: list[Proc]) -> list[Proc]:
    """Each of ``procs`` healthy; if one fails to start, all are stopped and its error raised."""
    try:
        for p in procs:
            wait_healthy(p)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def start(name: str, argv: list[str], url: str, log_dir: str, env: Optional[dict] = None,
          health: str = "/health", timeout: float = 180) -> Proc:
    return wait_healthy(spawn(name, argv, url, log_dir, env), health, timeout)


def launch_server(model_path: str, log_dir: str, name: str = "server",
                  args: Optional[list[str]] = None, env: Optional[dict] = None,
                  host: str = "127.0.0.1", wait: bool = True) -> Proc:  # fmt: skip
    """A server on a free port of ``host``, healthy; ``wait=False``: just started (see
    ``wait_all``)."""
    port = free_port(host)
    argv = ["-m", "sglang.launch_server", "--model-path", model_path, "--port", str(port),
            "--host", host, *(args or [])]
    proc = spawn(name, argv, f"http://{host}:{port}", log_dir, env)
    return wait_healthy(proc) if wait else proc


@dataclass
class PDCluster:
    prefills: list[Proc]
    decodes: list[Proc]
    lb: Proc
    bootstrap_ports: list[int]

    @property
    def url(self) -> str:
        return self.lb.url

    def procs(self) -> list[Proc]:
        return [self.lb, *self.prefills, *self.decodes]

    def stop(self) -> None:
        for p in self.procs():  # all shut down at once
            p.terminate()
        for p in self.procs():
            p.stop()


def launch_pd_cluster(model_path: str, log_dir: str, backend: str = "mooncake",
                      num_prefill: int = 1, num_decode: int = 1,
                      args: Optional[list[str]] = None, env: Optional[dict] = None,
                      prefill_args: Optional[list[str]] = None,
                      decode_args: Optional[list[str]] = None) -> PDCluster:
    """``prefill_args``/``decode_args``: one side's own flags (e.g. ``--tp-size``) after
    ``args``."""
    prefills, decodes, ports, lb = [], [], [], None
    common = ["--disaggregation-transfer-backend", backend, *(args or [])]
    # Every process starts at once: a decode meets its prefill only at the first request, and
    # mini_lb's first health check of its servers comes one interval (60 s) after its start.
    try:
        for i in range(num_prefill):
            bport = free_port()
            ports.append(bport)
            prefills.append(launch_server(
                model_path, log_dir, f"prefill{i}",
                ["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port",
                 str(bport), *common, *(prefill_args or [])], env, wait=False))
        for i in range(num_decode):
            # A request routed with bootstrap_port null (sglang-router's --prefill URL without a
            # port) goes to the decode's own --disaggregation-bootstrap-port: the first prefill's,
            # as SGLang users on one node run it.
            decodes.append(launch_server(
                model_path, log_dir, f"decode{i}",
                ["--disaggregation-mode", "decode", "--disaggregation-bootstrap-port",
                 str(ports[0]), *common, *(decode_args or [])], env, wait=False))
        lb_port = free_port()
        argv = ["-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1",
                "--port", str(lb_port), "--prefill", *[p.url for p in prefills],
                "--decode", *[d.url for d in decodes],
                "--prefill-bootstrap-ports", *map(str, ports)]
        lb = spawn("mini_lb", argv, f"http://127.0.0.1:{lb_port}", log_dir, env)
        wait_all([*prefills, *decodes, lb])
    except BaseException:
        for p in [*prefills, *decodes, *([lb] if lb else [])]:
            p.stop()
        raise
    return PDCluster(prefills, decodes, lb, ports)


FRONTS = {"router": "sglang_router.launch_router", "mini_lb": "sglang.srt.disaggregation.mini_lb"}


def pd_front_args(prefills: list[tuple[str, Optional[int]]], decodes: list[str], policy: str,
                  port: int) -> list[str]:  # fmt: skip
    """sglang-router's PD command line, which mini_lb takes too: ``--pd-disaggregation
    --prefill URL [PORT] ... --decode URL ... --policy P --host 127.0.0.1 --port N``."""
    argv = ["--pd-disaggregation"]
    for url, bport in prefills:
        argv += ["--prefill", url, *([str(bport)] if bport is not None else [])]
    for url in decodes:
        argv += ["--decode", url]
    return argv + ["--policy", policy, "--host", "127.0.0.1", "--port", str(port)]


def launch_router(cluster: PDCluster, log_dir: str, policy: str = "round_robin",
                  front: str = "router", bootstrap_ports: bool = True,
                  name: Optional[str] = None, env: Optional[dict] = None) -> Proc:  # fmt: skip
    """``front`` (sglang-router, ``python -m sglang_router.launch_router``, or mini_lb) in front
    of ``cluster``'s workers, started with the same command line. ``bootstrap_ports=False``
    leaves the prefills' ports out (the router then sends bootstrap_port null)."""
    port = free_port()
    prefills = [(p.url, bp if bootstrap_ports else None)
                for p, bp in zip(cluster.prefills, cluster.bootstrap_ports)]  # fmt: skip
    argv = ["-m", FRONTS[front],
            *pd_front_args(prefills, [d.url for d in cluster.decodes], policy, port)]
    if front == "router":  # its Prometheus exporter would take port 29000 on every interface
        argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
                 "--log-level", "warn", "--shutdown-grace-period-secs", "1"]
    return start(name or f"{front}-{policy}", argv, f"http://127.0.0.1:{port}", log_dir, env)
