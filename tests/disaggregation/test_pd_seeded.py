"""Sampling semantics through PD (1 prefill + 1 decode behind mini_lb, Mooncake and NIXL) equal
a unified server's: seeded sampling (the prefill draws token 1, the decode the rest, keyed by
(seed, output position)), alone and batched with other seeded and unseeded requests, and
``min_new_tokens`` (the prefill's first token respects it too).

Real server processes on loopback, the real transfer engines, the real tokenizer; expectations
are the unified server's answers to the same requests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.tools.model_factory.corpus import TINY_CHAT_PROMPT, TINY_PROMPTS

SAMPLED = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 20}
# Prompts unlike the corpus: small top-1 margins, so the seed decides most tokens.
SALAD = ["Hello", "The baker", "In the morning", "Goodbye"]


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def cluster(request, pd_clusters):
    return pd_clusters(request.param)  # shared with the other PD tests (conftest.py)


@pytest.fixture(autouse=True)
def pools_whole_after(cluster, unified):
    yield
    for p in cluster.prefills + cluster.decodes:
        assert_pool_whole(p.url)
    assert_pool_whole(unified)


def gen(url, **body):
    r = requests.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_seeded_alone_matches_unified(cluster, unified):
    for i, prompt in enumerate(SALAD):
        sp = {**SAMPLED, "seed": 1000 + i}
        ref = gen(unified, text=prompt, sampling_params=sp)
        out = gen(cluster.url, text=prompt, sampling_params=sp)
        assert out["output_ids"] == ref["output_ids"], prompt
        assert out["text"] == ref["text"]
    # It does sample: the same prompt with other seeds gives other tokens (on both).
    outs = {tuple(gen(cluster.url, text=SALAD[0], sampling_params={**SAMPLED, "seed": s})
                  ["output_ids"]) for s in range(3)}
    assert len(outs) == 3


def test_seeded_batched_matches_unified(cluster, unified):
    """Seeded requests batched with unseeded and greedy ones (one /generate batch, and a
    concurrent burst through the load balancer) get the tokens they get alone on a unified
    server; sampling_seed is SGLang's alias of seed."""
    seeded = [(SALAD[0], {**SAMPLED, "seed": 7}),
              (SALAD[1], {**SAMPLED, "sampling_seed": 8}),
              (SALAD[2], {**SAMPLED, "seed": 9, "top_k": 40}),
              (TINY_PROMPTS[0], {**SAMPLED, "seed": 7})]
    refs = [gen(unified, text=p, sampling_params=sp)["output_ids"] for p, sp in seeded]
    fillers = [(SALAD[3], SAMPLED), (TINY_PROMPTS[1], {"temperature": 0, "max_new_tokens": 20}),
               (SALAD[0], {**SAMPLED, "temperature": 1.2})]
    mixed = [seeded[0], fillers[0], seeded[1], fillers[1], seeded[2], fillers[2], seeded[3]]
    at = [0, 2, 4, 6]
    outs = gen(cluster.url, text=[p for p, _ in mixed], sampling_params=[sp for _, sp in mixed])
    assert [outs[i]["output_ids"] for i in at] == refs

    def one(item):
        prompt, sp = item
        return gen(cluster.url, text=prompt, sampling_params=sp)["output_ids"]

    with ThreadPoolExecutor(len(mixed)) as pool:
        burst = list(pool.map(one, mixed))
    assert [burst[i] for i in at] == refs


def test_openai_seed_matches_unified(cluster, unified):
    from openai import OpenAI

    pd = OpenAI(base_url=cluster.url + "/v1", api_key="none", max_retries=0)
    ref = OpenAI(base_url=unified + "/v1", api_key="none", max_retries=0)
    model = pd.models.list().data[0].id
    kw = dict(model=model, prompt=SALAD[1], temperature=0.8, top_p=0.9, max_tokens=20, seed=5)
    assert pd.completions.create(**kw).choices[0].text == \
        ref.completions.create(**kw).choices[0].text


def test_min_new_tokens_matches_unified(cluster, unified):
    info = requests.get(unified + "/get_server_info", timeout=10).json()
    eos_ids = set(info["eos_token_ids"])
    greedy = {"temperature": 0, "max_new_tokens": 48}
    ref = gen(unified, text=TINY_CHAT_PROMPT, sampling_params=greedy)
    n = len(ref["output_ids"])
    assert ref["output_ids"][-1] in eos_ids and n < 40  # an early EOS
    assert gen(cluster.url, text=TINY_CHAT_PROMPT, sampling_params=greedy)["output_ids"] == \
        ref["output_ids"]
    sp = {**greedy, "min_new_tokens": n + 6}
    want = gen(unified, text=TINY_CHAT_PROMPT, sampling_params=sp)
    out = gen(cluster.url, text=TINY_CHAT_PROMPT, sampling_params=sp)
    assert out["output_ids"] == want["output_ids"] and len(out["output_ids"]) >= n + 6
    assert not eos_ids.intersection(out["output_ids"][: n + 6])
    assert out["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"]


def test_first_token_respects_min_new_tokens(cluster, unified):
    """The prefill samples token 1: a stop_token_ids holding the greedy first token ends the
    request after it, unless min_new_tokens=1 masks it on the prefill."""
    greedy = {"temperature": 0, "max_new_tokens": 12}
    for prompt in (TINY_PROMPTS[2], SALAD[1]):
        first = gen(unified, text=prompt, sampling_params=greedy)["output_ids"][0]
        sp = {**greedy, "stop_token_ids": [first]}
        out = gen(cluster.url, text=prompt, sampling_params=sp)
        assert out["output_ids"] == [first]
        assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": first}
        sp["min_new_tokens"] = 1
        want = gen(unified, text=prompt, sampling_params=sp)["output_ids"]
        out = gen(cluster.url, text=prompt, sampling_params=sp)["output_ids"]
        assert out[0] != first and out == want
