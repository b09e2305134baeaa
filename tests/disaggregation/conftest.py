"""Shared by the PD end-to-end tests: one unified (non-PD) server as the reference, one
1 prefill + 1 decode cluster behind mini_lb per transfer backend, and one 2 prefill + 2 decode
cluster (Mooncake), each launched on first use and kept for the session (launching servers is
most of the suite's time). sglang-router tests put their routers in front of the same workers.

A test that kills, blocks or reconfigures a server launches its own instead."""

from __future__ import annotations

import pytest

from sglang.test.server_utils import launch_pd_cluster, launch_server

REFERENCE_ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens",
                  "4096", "--context-length", "1024"]
# The shared clusters run with the reference server's arguments, and serve /metrics
# (test_metrics.py reads them; the reference server has no --enable-metrics: its /metrics is 404).
PD_ARGS = [*REFERENCE_ARGS, "--enable-metrics"]


@pytest.fixture(scope="session")
def unified(tiny_model, log_dir):
    """URL of a unified server; greedy answers do not depend on page or chunk size."""
    proc = launch_server(tiny_model, log_dir, "reference", REFERENCE_ARGS)
    yield proc.url
    proc.stop()


@pytest.fixture(scope="session")
def pd_clusters(tiny_model, log_dir):
    """``pd_clusters(backend, n=1)``: the session's nPnD cluster (``PDCluster``) on that backend,
    behind mini_lb."""
    clusters = {}

    def get(backend: str, n: int = 1):
        if (backend, n) not in clusters:
            clusters[backend, n] = launch_pd_cluster(
                tiny_model, f"{log_dir}/pd-{backend}" + (f"-{n}p{n}d" if n > 1 else ""),
                backend=backend, num_prefill=n, num_decode=n, args=PD_ARGS)
        return clusters[backend, n]

    yield get
    for c in clusters.values():
        c.stop()


@pytest.fixture(scope="session")
def pd_2p2d(pd_clusters):
    """The session's 2 prefill + 2 decode cluster (Mooncake) behind mini_lb."""
    return pd_clusters("mooncake", 2)
