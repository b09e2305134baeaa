"""PD end to end: prefill + decode servers behind mini_lb give a unified server's answers.

Real server processes on loopback, the real Mooncake (TCP) and NIXL (UCX) engines, the real
tokenizer, the official ``openai`` client. Prompts span several chunks of chunked prefill (chunk
32 tokens, page 4), hit the prefill's prefix cache, come alone and in batches, streamed and not.
"""

from __future__ import annotations

import json

import pytest
import requests

from pool_checks import assert_pool_whole

# the same as conftest.py's shared clusters and reference server
SERVER_ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
               "--context-length", "1024"]
STORY = ("The river ran past the old mill, and the children who lived in the village liked to "
         "watch the water turn the wheel. In the morning the baker opened the door and the smell "
         "of bread filled the street. ")
PROMPTS = [
    "Once upon a time",
    STORY + "One day",
    STORY * 2 + "The lighthouse keeper",
    "Hello",
]
GREEDY = {"temperature": 0, "max_new_tokens": 24}
# the reference server ``unified`` and the clusters come from tests/conftest.py


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def cluster(request, pd_clusters):
    return pd_clusters(request.param)


@pytest.fixture(autouse=True)
def pools_whole_after(cluster):
    yield
    for p in cluster.prefills + cluster.decodes:
        assert_pool_whole(p.url)


def gen(url, **body):
    r = requests.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_generate_matches_unified(cluster, unified):
    for prompt in PROMPTS:
        ref = gen(unified, text=prompt, sampling_params=GREEDY)
        out = gen(cluster.url, text=prompt, sampling_params=GREEDY)
        assert out["output_ids"] == ref["output_ids"], prompt
        assert out["text"] == ref["text"]
        assert out["meta_info"]["completion_tokens"] == ref["meta_info"]["completion_tokens"]
        assert out["meta_info"]["prompt_tokens"] == ref["meta_info"]["prompt_tokens"]


def test_prefix_cache_hit_on_prefill(cluster, unified):
    gen(cluster.url, text=STORY * 2, sampling_params={"max_new_tokens": 2})
    prompt = STORY * 2 + "Then the wind came"
    out = gen(cluster.url, text=prompt, sampling_params=GREEDY)
    assert out["meta_info"]["cached_tokens"] >= 32
    assert out["output_ids"] == gen(unified, text=prompt, sampling_params=GREEDY)["output_ids"]


def test_batch_matches_unified(cluster, unified):
    refs = gen(unified, text=PROMPTS, sampling_params=GREEDY)
    outs = gen(cluster.url, text=PROMPTS, sampling_params=GREEDY)
    assert [o["output_ids"] for o in outs] == [r["output_ids"] for r in refs]


def test_stream_matches_unified(cluster, unified):
    ref = gen(unified, text=PROMPTS[1], sampling_params=GREEDY)
    r = requests.post(cluster.url + "/generate", json={
        "text": PROMPTS[1], "sampling_params": GREEDY, "stream": True}, stream=True, timeout=120)
    assert r.status_code == 200
    chunks = [json.loads(line[6:]) for line in r.iter_lines()
              if line.startswith(b"data: ") and line != b"data: [DONE]"]
    assert len(chunks) > 1
    assert chunks[-1]["output_ids"] == ref["output_ids"]
    assert chunks[-1]["text"] == ref["text"]


def test_logprobs_match_unified(cluster, unified):
    body = dict(text=PROMPTS[1], sampling_params=GREEDY, return_logprob=True,
                top_logprobs_num=3, logprob_start_len=0)
    ref, out = gen(unified, **body)["meta_info"], gen(cluster.url, **body)["meta_info"]
    assert len(out["output_token_logprobs"]) == out["completion_tokens"]
    for (a, ta, _), (b, tb, _) in zip(out["output_token_logprobs"], ref["output_token_logprobs"]):
        assert ta == tb and abs(a - b) < 1e-3
    assert [[t for _, t, _ in top] for top in out["output_top_logprobs"]] == \
        [[t for _, t, _ in top] for top in ref["output_top_logprobs"]]
    # input logprobs come from the prefill server, merged in by mini_lb
    assert len(out["input_token_logprobs"]) == out["prompt_tokens"]
    for (a, ta, _), (b, tb, _) in zip(out["input_token_logprobs"][1:],
                                      ref["input_token_logprobs"][1:]):
        assert ta == tb and abs(a - b) < 1e-3


def test_openai_routes_match_unified(cluster, unified):
    from openai import OpenAI

    def clients(url):
        return OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

    pd, ref = clients(cluster.url), clients(unified)
    model = pd.models.list().data[0].id
    msgs = [{"role": "user", "content": "Tell me about the baker."}]
    a = pd.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    b = ref.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens == b.usage.completion_tokens
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in pd.chat.completions.create(model=model, messages=msgs, max_tokens=24,
                                            temperature=0, stream=True) if c.choices)
    assert streamed == b.choices[0].message.content
    c = pd.completions.create(model=model, prompt=PROMPTS[2], max_tokens=24, temperature=0,
                              logprobs=2)
    d = ref.completions.create(model=model, prompt=PROMPTS[2], max_tokens=24, temperature=0,
                               logprobs=2)
    assert c.choices[0].text == d.choices[0].text
    assert c.choices[0].logprobs.tokens == d.choices[0].logprobs.tokens
    streamed = "".join(
        ch.choices[0].text for ch in pd.completions.create(
            model=model, prompt=PROMPTS[2], max_tokens=24, temperature=0, stream=True)
        if ch.choices)
    assert streamed == d.choices[0].text


def test_requests_to_a_pd_server_without_bootstrap_fields_are_refused(cluster):
    for p in cluster.prefills + cluster.decodes:
        r = requests.post(p.url + "/generate", json={"text": "hi"}, timeout=30)
        assert r.status_code == 400
        assert "load balancer" in r.json()["error"]["message"]
