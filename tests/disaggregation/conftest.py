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
    """``pd_clusters(backend)``: the session's 1P1D cluster (``PDCluster``) on that backend."""
    clusters = {}

    def get(backend: str):
        if backend not in clusters:
            clusters[backend] = launch_pd_cluster(tiny_model, f"{log_dir}/pd-{backend}",
                                                  backend=backend, args=PD_ARGS)
        return clusters[backend]

    yield get
    for c in clusters.values():
        c.stop()


@pytest.fixture(scope="session")
def pd_2p2d(tiny_model, log_dir):
    """The session's 2 prefill + 2 decode cluster (Mooncake) behind mini_lb."""
    c = launch_pd_cluster(tiny_model, f"{log_dir}/2p2d", backend="mooncake", num_prefill=2,
                          num_decode=2, args=PD_ARGS)
    yield c
    c.stop()
