from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sglang.test.server_utils import launch_pd_cluster, launch_server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "disaggregation"))
MODEL_CACHE = Path(os.environ.get("SGLANG_TEST_MODEL_DIR", ROOT / "models"))


_BUILDS: dict[str, subprocess.Popen] = {}  # preset -> its build in a child process


def pytest_collection_finish(session) -> None:
    """If a collected test needs the multilingual model and it is not built yet, build it in a
    child process now, while the session builds (and uses) the tiny one: a build trains on one
    core (about 30 s each here), so on 2 cores both take the time of one."""
    preset = "tiny-multilingual"
    if (MODEL_CACHE / f"{preset}-seed0").exists() or not any(
            "multilingual_model" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    code = ("import sys; from sglang.tools.create_model import cached_model; "
            "cached_model(sys.argv[1], sys.argv[2])")
    _BUILDS[preset] = subprocess.Popen([sys.executable, "-c", code, preset, str(MODEL_CACHE)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def built_model(preset: str, seed: int = 0) -> str:
    """A locally built model, made once and reused (models/ is git-ignored)."""
    from sglang.tools.create_model import cached_model

    child = _BUILDS.pop(preset, None) if seed == 0 else None
    if child is not None:
        child.wait()  # then the cache has it (or, had the child failed, it is built here)
    return cached_model(preset, MODEL_CACHE, seed)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return built_model("tiny")


@pytest.fixture(scope="session")
def multilingual_model() -> str:
    return built_model("tiny-multilingual")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("logs"))


# ---- servers shared by the end-to-end tests ----------------------------------------------------
# One unified (non-PD) server as the reference, 1P1D clusters behind mini_lb per transfer backend
# and a 2P2D one, each launched on first use and kept for the session (launching servers is most
# of the suite's time); sglang-router tests put routers in front of the same workers. A test that
# kills, blocks or reconfigures a server launches its own instead.

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
