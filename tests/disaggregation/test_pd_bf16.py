"""PD in bfloat16: the decode server's C attention kernel reads pages that the prefill wrote into
its pool over Mooncake (no EXTEND ever ran there), and gives a unified bf16 server's answers."""

from __future__ import annotations

import pytest
import requests
from test_pd_e2e import GREEDY, PROMPTS, SERVER_ARGS, gen

from pool_checks import assert_pool_whole
from sglang.srt.layers import cpu_kernels
from sglang.test.server_utils import launch_pd_cluster, launch_server, wait_healthy

ARGS = [*SERVER_ARGS, "--dtype", "bfloat16"]


@pytest.fixture(scope="module")
def servers(tiny_model, log_dir):
    unified = launch_server(tiny_model, log_dir, "reference-bf16", ARGS, wait=False)
    try:  # the reference starts alongside the cluster's servers
        cluster = launch_pd_cluster(tiny_model, f"{log_dir}/bf16", backend="mooncake", args=ARGS)
        wait_healthy(unified)
    except BaseException:
        unified.stop()
        raise
    yield unified, cluster
    cluster.stop()
    unified.stop()


def test_bf16_pd_matches_unified_with_kernels(servers):
    unified, cluster = servers
    for proc in (unified, *cluster.decodes):
        info = requests.get(proc.url + "/get_server_info", timeout=30).json()
        assert "bfloat16" in info["dtype"]
        assert info["cpu_kernels"] is (cpu_kernels.get() is not None)  # torch ops without gcc
    for prompt in PROMPTS:
        ref = gen(unified.url, text=prompt, sampling_params=GREEDY)
        out = gen(cluster.url, text=prompt, sampling_params=GREEDY)
        assert out["output_ids"] == ref["output_ids"], prompt
    refs = gen(unified.url, text=PROMPTS, sampling_params=GREEDY)
    outs = gen(cluster.url, text=PROMPTS, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
    for proc in (unified, *cluster.prefills, *cluster.decodes):
        assert_pool_whole(proc.url)
