"""Sampling semantics on a real unified server: seeded draws keyed by output position (the same
tokens alone and in any batch), ``min_new_tokens`` / OpenAI ``min_tokens`` against an early EOS
and a stop string, their validation, and ``--max-prefill-tokens`` (a burst of requests gets the
same greedy answers as without it).

Expectations come from the model's own greedy outputs in each test, not from stored strings.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import launch_server
from sglang.tools.model_factory.corpus import TINY_CHAT_PROMPT, TINY_PROMPTS

SAMPLED = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 24}
STORY = ("The river ran past the old mill, and the children who lived in the village liked to "
         "watch the water turn the wheel. In the morning the baker opened the door and the smell "
         "of bread filled the street. ")


@pytest.fixture(scope="module")
def server(unified):
    """The session's reference server: nothing here depends on its page, chunk or pool size."""
    return unified


@pytest.fixture(scope="module")
def eos_ids(server):
    ids = requests.get(server + "/get_server_info", timeout=10).json()["eos_token_ids"]
    assert ids
    return set(ids)


@pytest.fixture(autouse=True)
def pool_whole_after(server):
    yield
    assert_pool_whole(server)


def gen(url, **body):
    r = requests.post(url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def early_eos(url, eos_ids):
    """The chat prompt, whose greedy answer ends on EOS after a few tokens: (prompt, ids)."""
    ref = gen(url, text=TINY_CHAT_PROMPT, sampling_params={"temperature": 0, "max_new_tokens": 48})
    ids = ref["output_ids"]
    assert ref["meta_info"]["finish_reason"]["type"] == "stop" and ids[-1] in eos_ids, ref
    assert len(ids) < 40, ref  # early enough to ask for more
    return TINY_CHAT_PROMPT, ids


# ---- seeds ---------------------------------------------------------------------------------
def test_seeded_request_is_batch_independent(server):
    # Prompts unlike the corpus: small top-1 margins, so the seed decides the tokens.
    prompts = ["Hello", "The baker", "In the morning"]
    alone = [gen(server, text=p, sampling_params={**SAMPLED, "seed": 100 + i})["output_ids"]
             for i, p in enumerate(prompts)]
    # The same requests in one batch, beside unseeded ones and a greedy one, in another order.
    batch_prompts = [prompts[2], "Hello there", prompts[0], TINY_PROMPTS[1], prompts[1]]
    batch_params = [{**SAMPLED, "seed": 102}, SAMPLED, {**SAMPLED, "seed": 100},
                    {"temperature": 0, "max_new_tokens": 24}, {**SAMPLED, "sampling_seed": 101}]
    outs = gen(server, text=batch_prompts, sampling_params=batch_params)
    assert [outs[i]["output_ids"] for i in (2, 4, 0)] == alone
    # It does sample: other seeds give other tokens for the same prompt.
    others = [gen(server, text=prompts[0], sampling_params={**SAMPLED, "seed": s})["output_ids"]
              for s in range(3)]
    assert len({tuple(o) for o in others + [alone[0]]}) == 4


# ---- min_new_tokens ------------------------------------------------------------------------
def check_min_against_eos(out, ref, n_min, max_new, eos_ids):
    ids, reason = out["output_ids"], out["meta_info"]["finish_reason"]
    n = len(ref)
    assert len(ids) >= n_min, out
    assert ids[: n - 1] == ref[: n - 1]  # the mask touches only the stop tokens
    assert not eos_ids.intersection(ids[:n_min])
    if reason["type"] == "stop":
        assert ids[-1] in eos_ids and reason["matched"] == ids[-1]
    else:
        assert reason == {"type": "length", "length": max_new} and len(ids) == max_new


def test_min_new_tokens_holds_against_eos(server, eos_ids):
    prompt, ref = early_eos(server, eos_ids)
    n_min, max_new = len(ref) + 6, len(ref) + 16
    out = gen(server, text=prompt, sampling_params={
        "temperature": 0, "max_new_tokens": max_new, "min_new_tokens": n_min})
    check_min_against_eos(out, ref, n_min, max_new, eos_ids)
    # min_new_tokens == max_new_tokens: exactly that many, finished by length.
    out = gen(server, text=prompt, sampling_params={
        "temperature": 0, "max_new_tokens": n_min, "min_new_tokens": n_min})
    assert len(out["output_ids"]) == n_min
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": n_min}
    # Sampled rows are masked too.
    for seed in range(3):
        out = gen(server, text=prompt, sampling_params={
            **SAMPLED, "seed": seed, "max_new_tokens": max_new, "min_new_tokens": n_min})
        assert len(out["output_ids"]) >= n_min
        assert not eos_ids.intersection(out["output_ids"][:n_min])


def test_min_new_tokens_masks_stop_token_ids_and_first_token(server):
    full = gen(server, text=TINY_PROMPTS[1], sampling_params={"temperature": 0,
                                                               "max_new_tokens": 16})
    first = full["output_ids"][0]
    body = {"temperature": 0, "max_new_tokens": 16, "stop_token_ids": [first]}
    out = gen(server, text=TINY_PROMPTS[1], sampling_params=body)
    assert out["output_ids"] == [first]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": first}
    out = gen(server, text=TINY_PROMPTS[1], sampling_params={**body, "min_new_tokens": 1})
    assert out["output_ids"][0] != first  # the first token (the prefill's) is masked too
    assert len(out["output_ids"]) >= 1


def test_min_new_tokens_holds_against_stop_string(server):
    prompt = TINY_PROMPTS[1]
    full = gen(server, text=prompt, sampling_params={"temperature": 0, "max_new_tokens": 40})
    words = full["text"].split()
    stop = words[1]  # a word of the greedy answer, soon after its start
    short = gen(server, text=prompt, sampling_params={
        "temperature": 0, "max_new_tokens": 40, "stop": stop, "no_stop_trim": True})
    assert short["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    k = len(short["output_ids"])
    assert short["output_ids"] == full["output_ids"][:k] and k < 12
    n_min = k + 8
    out = gen(server, text=prompt, sampling_params={
        "temperature": 0, "max_new_tokens": 40, "stop": stop, "no_stop_trim": True,
        "min_new_tokens": n_min})
    ids = out["output_ids"]
    assert len(ids) >= n_min and ids == full["output_ids"][: len(ids)]
    reason = out["meta_info"]["finish_reason"]
    assert reason["type"] == "length" or reason == {"type": "stop", "matched": stop}


def test_openai_min_tokens(server, eos_ids):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    msgs = [{"role": "user", "content": "What is two plus two?"}]
    ref = client.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=48)
    n = ref.usage.completion_tokens
    assert ref.choices[0].finish_reason == "stop" and n < 40  # an early EOS
    n_min = n + 6
    out = client.chat.completions.create(model=model, messages=msgs, temperature=0,
                                         max_tokens=n + 16, extra_body={"min_tokens": n_min})
    assert out.usage.completion_tokens >= n_min
    assert out.choices[0].message.content.startswith(ref.choices[0].message.content)
    assert out.choices[0].finish_reason == (
        "length" if out.usage.completion_tokens == n + 16 else "stop")
    # Completions with a stop string from the model's own answer.
    prompt = TINY_PROMPTS[1]
    full = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=40)
    stop = full.choices[0].text.split()[1]
    short = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=40,
                                      stop=stop)
    k = short.usage.completion_tokens
    assert short.choices[0].finish_reason == "stop" and k < 12
    out = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=40,
                                    stop=stop, extra_body={"min_tokens": k + 8})
    assert out.usage.completion_tokens >= k + 8
    assert full.choices[0].text.startswith(out.choices[0].text)


@pytest.mark.parametrize("sp, message", [
    ({"max_new_tokens": 8, "min_new_tokens": 9},
     "min_new_tokens must be in [0, max_new_tokens(8)], got 9"),
    ({"min_new_tokens": -1}, "min_new_tokens must be in [0, max_new_tokens(128)], got -1"),
    ({"min_new_tokens": 1.5}, "min_new_tokens must be a number"),
    ({"min_new_tokens": "3"}, "min_new_tokens must be a number"),
])
def test_min_new_tokens_validation(server, sp, message):
    r = requests.post(server + "/generate", json={"text": "Hi", "sampling_params": sp},
                      timeout=30)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_openai_min_tokens_validation(server):
    for body in ({"max_tokens": 4, "min_tokens": 5}, {"min_tokens": -1}):
        r = requests.post(server + "/v1/completions", json={"prompt": "Hi", **body}, timeout=30)
        assert r.status_code == 400 and "min_" in r.json()["error"]["message"], r.text


# ---- --max-prefill-tokens ------------------------------------------------------------------
def test_max_prefill_tokens_burst_matches(server, tiny_model, log_dir):
    """With a prefill budget smaller than most prompts, a burst still gets the greedy answers of
    the default server, and a prompt longer than the budget is served (admitted alone)."""
    small = launch_server(tiny_model, log_dir, "small-prefill", ["--max-prefill-tokens", "16"])
    try:
        prompts = [*TINY_PROMPTS, STORY + "One day", STORY * 2 + "The lighthouse keeper",
                   "Hello", "The baker"]
        sp = {"temperature": 0, "max_new_tokens": 12}
        refs = [gen(server, text=p, sampling_params=sp)["output_ids"] for p in prompts]

        def one(p):
            return gen(small.url, text=p, sampling_params=sp)["output_ids"]

        with ThreadPoolExecutor(len(prompts)) as pool:
            burst = list(pool.map(one, prompts))
        assert burst == refs
        # One batched request too: its prompts enter the waiting queue together.
        batch = gen(small.url, text=prompts, sampling_params=sp)
        assert [o["output_ids"] for o in batch] == refs
        assert_pool_whole(small.url)
    finally:
        small.stop()


def test_max_prefill_tokens_must_be_positive(tiny_model):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "sglang.launch_server", "--model-path", tiny_model,
         "--max-prefill-tokens", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--max-prefill-tokens must be >= 1" in r.stdout + r.stderr
