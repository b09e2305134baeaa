"""SGLang's production router (``sglang-router`` from PyPI, the real Rust binary) in front of
this engine's PD workers, and mini_lb started with the router's very command line.

The routers sit in front of the session's shared clusters (conftest.py): 1P1D on Mooncake and
NIXL, 2P2D on Mooncake. Starting a router is cheap, so each policy gets its own router over the
same workers. Answers are compared with the session's unified server.

Logprobs: the decode answers ``input_token_logprobs: []`` (as SGLang's decode) and the balancer
prepends the prefill's. sglang-router 0.3.2 merges ``input_token_logprobs`` of non-streamed
/generate only: it parses the prefill's whole response as one JSON object (a stream is SSE, so
nothing is merged there) and leaves ``input_top_logprobs`` to the decode's empty list. mini_lb
merges both keys, streamed or not.
"""

from __future__ import annotations

import json

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import launch_router
from test_pd_e2e import GREEDY, PROMPTS, STORY, gen

pytest.importorskip("sglang_router", reason="sglang-router is not installed (make install "
                    "installs it: pip install -e .[test])")  # fmt: skip

POLICIES = ["random", "round_robin", "power_of_two", "cache_aware"]
BACKENDS = ["mooncake", "nixl"]
LOGPROB = dict(return_logprob=True, top_logprobs_num=3, logprob_start_len=0)


@pytest.fixture(scope="module")
def fronts(log_dir):
    """``fronts(cluster, front, policy, ports)``: a router (or mini_lb) launched once per
    combination over ``cluster``'s workers, stopped at the end of the module."""
    procs = {}

    def get(cluster, front="router", policy="round_robin", ports=True):
        key = (id(cluster), front, policy, ports)
        if key not in procs:
            procs[key] = launch_router(cluster, f"{log_dir}/fronts", policy, front, ports,
                                       name=f"{front}-{policy}-{len(procs)}")  # fmt: skip
        return procs[key].url

    yield get
    for p in procs.values():
        p.stop()


def stream_events(url, body):
    r = requests.post(url + "/generate", json={**body, "stream": True}, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    return [json.loads(ln[6:]) for ln in r.iter_lines()
            if ln.startswith(b"data: ") and ln != b"data: [DONE]"]  # fmt: skip


def close(a, b, tol=1e-3):
    """Equal [logprob, token_id, text] lists, logprobs within ``tol`` (the router re-prints
    floats)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x[1] == y[1] and x[2] == y[2]
        assert (x[0] is None and y[0] is None) or abs(x[0] - y[0]) < tol


def assert_pools_whole(cluster):
    for p in cluster.prefills + cluster.decodes:
        assert_pool_whole(p.url)


@pytest.mark.parametrize("backend", BACKENDS)
def test_router_1p1d_matches_unified(backend, pd_clusters, unified, fronts):
    cluster = pd_clusters(backend)
    url = fronts(cluster)
    for prompt in PROMPTS:
        ref = gen(unified, text=prompt, sampling_params=GREEDY)
        out = gen(url, text=prompt, sampling_params=GREEDY)
        assert out["output_ids"] == ref["output_ids"] and out["text"] == ref["text"], prompt
    streamed = stream_events(url, {"text": PROMPTS[1], "sampling_params": GREEDY})
    ref = gen(unified, text=PROMPTS[1], sampling_params=GREEDY)
    assert len(streamed) > 1 and streamed[-1]["output_ids"] == ref["output_ids"]

    # logprobs: non-stream, input ones merged by the router from the prefill's answer
    body = dict(text=PROMPTS[1], sampling_params=GREEDY, **LOGPROB)
    ref = gen(unified, **body)["meta_info"]
    out = gen(url, **body)["meta_info"]
    assert len(ref["input_token_logprobs"]) == ref["prompt_tokens"]
    close(out["input_token_logprobs"], ref["input_token_logprobs"])
    close(out["output_token_logprobs"], ref["output_token_logprobs"])
    # streamed: output logprobs equal; input ones are whatever the router merged (see above)
    last = stream_events(url, body)[-1]["meta_info"]
    close(last["output_token_logprobs"], ref["output_token_logprobs"])
    assert last["input_token_logprobs"] in ([], out["input_token_logprobs"])
    # mini_lb with the same command line merges both keys, streamed and not
    lb = fronts(cluster, "mini_lb")
    for meta in (gen(lb, **body)["meta_info"], stream_events(lb, body)[-1]["meta_info"]):
        close(meta["input_token_logprobs"], ref["input_token_logprobs"])
        for a, b in zip(meta["input_top_logprobs"][1:], ref["input_top_logprobs"][1:]):
            close(a, b)
    assert_pools_whole(cluster)


@pytest.mark.parametrize("backend", BACKENDS)
def test_router_openai_routes(backend, pd_clusters, unified, fronts):
    from openai import OpenAI

    cluster = pd_clusters(backend)
    pd = OpenAI(base_url=fronts(cluster) + "/v1", api_key="none", max_retries=0)
    ref = OpenAI(base_url=unified + "/v1", api_key="none", max_retries=0)
    model = ref.models.list().data[0].id
    assert pd.models.list().data[0].id == model
    msgs = [{"role": "user", "content": "Tell me about the baker."}]
    b = ref.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    a = pd.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    chunks = pd.chat.completions.create(model=model, messages=msgs, max_tokens=24,
                                        temperature=0, stream=True)  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        b.choices[0].message.content
    d = ref.completions.create(model=model, prompt=PROMPTS[2], max_tokens=24, temperature=0,
                               logprobs=2)  # fmt: skip
    c = pd.completions.create(model=model, prompt=PROMPTS[2], max_tokens=24, temperature=0,
                              logprobs=2)  # fmt: skip
    assert c.choices[0].text == d.choices[0].text
    assert c.choices[0].logprobs.tokens == d.choices[0].logprobs.tokens
    streamed = pd.completions.create(model=model, prompt=PROMPTS[2], max_tokens=24,
                                     temperature=0, stream=True)  # fmt: skip
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == d.choices[0].text
    assert_pools_whole(cluster)


@pytest.mark.parametrize("front", ["router", "mini_lb"])
@pytest.mark.parametrize("policy", POLICIES)
def test_policy_without_bootstrap_ports(policy, front, pd_clusters, unified, fronts):
    """Each policy, and ``--prefill URL`` without a port: the request carries bootstrap_port
    null and the decode falls back to its own --disaggregation-bootstrap-port."""
    cluster = pd_clusters("mooncake")
    url = fronts(cluster, front, policy, ports=False)
    prompts = [PROMPTS[0], STORY + "The baker", STORY + "The baker"]  # a repeated prefix
    for prompt in prompts:
        out = gen(url, text=prompt, sampling_params=GREEDY)
        assert out["output_ids"] == gen(unified, text=prompt, sampling_params=GREEDY)[
            "output_ids"], prompt  # fmt: skip
    assert_pools_whole(cluster)


def work(cluster):
    def state(url):
        return requests.get(url + "/get_server_info", timeout=10).json()["internal_states"][0]
    return ([state(p.url)["disaggregation"]["transfer"]["transfers"] for p in cluster.prefills]
            + [state(d.url)["forward_ct"] for d in cluster.decodes])  # fmt: skip


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_router_2p2d(backend, policy, pd_clusters, unified, fronts):
    pd_2p2d = pd_clusters(backend, 2)
    url = fronts(pd_2p2d, "router", policy)
    prompts = [f"{STORY}Story number {i}:" for i in range(6)]
    refs = gen(unified, text=prompts, sampling_params=GREEDY)
    before = work(pd_2p2d)
    for prompt, ref in zip(prompts, refs):
        assert gen(url, text=prompt, sampling_params=GREEDY)["output_ids"] == ref["output_ids"]
    done = [b - a for a, b in zip(before, work(pd_2p2d))]
    assert sum(done[:2]) == len(prompts)  # one KV transfer per request
    if policy == "round_robin":  # every server got work
        assert all(n > 0 for n in done), done
    assert_pools_whole(pd_2p2d)
