"""PD with data parallelism: a prefill with ``--dp-size 2`` (two replicas, each with its own KV
manager; replica 0 runs the bootstrap server and replica 1 registers with it under dp_rank 1)
and the session's Mooncake decode (dp 1) behind a mini_lb of their own. mini_lb draws random
rooms; the prefill sends room R to replica R % 2 and the decode fetches that replica's
registration, so answers equal the unified server's and both replicas transfer. The bootstrap
server answers per dp_rank and refuses a bad one."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pool_checks import assert_pool_whole, pool_states

from sglang.srt.utils.network import free_port
from sglang.test.server_utils import launch_server, start
from test_pd_e2e import STORY, gen

GREEDY = {"temperature": 0, "max_new_tokens": 8}
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024", "--disaggregation-transfer-backend", "mooncake"]


@pytest.fixture(scope="module")
def dp_cluster(tiny_model, log_dir, pd_clusters):
    """(mini_lb URL, prefill Proc, its bootstrap port, decode URL); the decode is the session's
    1P1D Mooncake cluster's (a decode serves any prefill that sends it rooms)."""
    decode = pd_clusters("mooncake").decodes[0].url
    bport = free_port()
    prefill = launch_server(tiny_model, f"{log_dir}/pd-dp", "prefill-dp2", [
        *ARGS, "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bport),
        "--dp-size", "2"])
    lb = None
    try:
        port = free_port()
        lb = start("mini_lb-dp", ["-m", "sglang.srt.disaggregation.mini_lb", "--host",
                                  "127.0.0.1", "--port", str(port), "--prefill", prefill.url,
                                  "--decode", decode, "--prefill-bootstrap-ports", str(bport)],
                   f"http://127.0.0.1:{port}", f"{log_dir}/pd-dp")
        yield lb.url, prefill, bport, decode
    finally:
        if lb is not None:
            lb.stop()
        prefill.stop()


def test_prefill_dp2_equals_unified_and_uses_both_replicas(dp_cluster, unified):
    url, prefill, bport, decode = dp_cluster
    def counts():
        states = pool_states(prefill.url)
        return ([s["disaggregation"]["transfer"]["transfers"] for s in states],
                [s["num_received_reqs"] for s in states])

    before = counts()
    # 16 random rooms all of one parity: probability 2**-15
    prompts = [f"{STORY}Story number {i}:" for i in range(16)]
    refs = gen(unified, text=prompts, sampling_params=GREEDY)
    with ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda p: gen(url, text=p, sampling_params=GREEDY), prompts))
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]
    assert [s["dp_rank"] for s in pool_states(prefill.url)] == [0, 1]
    after = counts()
    sent, received = ([a - b for a, b in zip(after[i], before[i])] for i in (0, 1))
    assert sum(sent) == len(prompts) and all(n > 0 for n in sent), sent
    assert received == sent  # every request transferred from the replica it was sent to
    for server in (prefill.url, decode):
        assert_pool_whole(server)

    routes = [requests.get(f"http://127.0.0.1:{bport}/route", params={"dp_rank": d}, timeout=5)
              for d in (0, 1)]
    assert [r.json()["dp_rank"] for r in routes] == [0, 1]
    assert routes[0].json()["dp_size"] == 2
    assert routes[0].json()["rank_port"] != routes[1].json()["rank_port"]
    for bad, status in (("x", 400), ("-1", 400), ("2", 503)):
        r = requests.get(f"http://127.0.0.1:{bport}/route", params={"dp_rank": bad}, timeout=5)
        assert r.status_code == status and ("dp_rank" in r.text or "DP rank" in r.text), r.text
