"""2 prefill + 2 decode behind one mini_lb: requests reach both pairs, every answer is right."""

from __future__ import annotations

import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import launch_pd_cluster
from test_pd_e2e import GREEDY, SERVER_ARGS, STORY, gen


def test_two_prefill_two_decode(tiny_model, log_dir, unified):
    c = launch_pd_cluster(tiny_model, f"{log_dir}/2p2d", backend="mooncake",
                          num_prefill=2, num_decode=2, args=SERVER_ARGS)
    try:
        prompts = [f"{STORY}Story number {i}:" for i in range(8)]
        refs = gen(unified, text=prompts, sampling_params=GREEDY)
        outs = [gen(c.url, text=p, sampling_params=GREEDY) for p in prompts]
        assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
        for p in c.prefills:
            t = requests.get(p.url + "/get_server_info", timeout=10).json()
            assert t["internal_states"][0]["disaggregation"]["transfer"]["transfers"] > 0, p.name
        for d in c.decodes:
            st = requests.get(d.url + "/get_server_info", timeout=10).json()["internal_states"][0]
            assert st["forward_ct"] > 0, d.name
        for p in c.prefills + c.decodes:
            assert_pool_whole(p.url)
    finally:
        c.stop()
