"""2 prefill + 2 decode behind one mini_lb: requests reach both pairs, every answer is right."""

from __future__ import annotations

import requests

from pool_checks import assert_pool_whole
from test_pd_e2e import GREEDY, STORY, gen


def work_counts(c):
    """Per server: transfers sent by each prefill, forward passes run by each decode."""
    def state(url):
        return requests.get(url + "/get_server_info", timeout=10).json()["internal_states"][0]
    return ([state(p.url)["disaggregation"]["transfer"]["transfers"] for p in c.prefills],
            [state(d.url)["forward_ct"] for d in c.decodes])


def test_two_prefill_two_decode(pd_2p2d, unified):
    c = pd_2p2d  # the session's 2P2D cluster (conftest.py), shared with test_pd_router.py
    before = work_counts(c)
    prompts = [f"{STORY}Story number {i}:" for i in range(8)]
    refs = gen(unified, text=prompts, sampling_params=GREEDY)
    outs = [gen(c.url, text=p, sampling_params=GREEDY) for p in prompts]
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
    after = work_counts(c)
    for p, n0, n1 in zip(c.prefills, before[0], after[0]):
        assert n1 > n0, p.name
    for d, n0, n1 in zip(c.decodes, before[1], after[1]):
        assert n1 > n0, d.name
    for p in c.prefills + c.decodes:
        assert_pool_whole(p.url)
