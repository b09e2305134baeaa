"""Streamed text equals non-streamed text for multilingual output, on every route.

The ``tiny-multilingual`` model (trained on random CJK, emoji, accented Latin, ...) answers
through a unified server and through mini_lb in front of 1 prefill + 1 decode. Its byte-level
tokenizer splits every multi-byte character over 2-4 tokens; the tests check that the outputs
really hold such characters, then that native ``/generate`` streaming (cumulative text, which
must only grow by appending) and the OpenAI streams (deltas) give the non-streamed text, with
greedy and seeded sampling, cut mid-character by ``max_new_tokens``, and with stop strings.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import requests
from transformers import AutoTokenizer

from pool_checks import assert_pool_whole
from sglang.test.server_utils import launch_pd_cluster, launch_server
from sglang.tools.model_factory.corpus import _MULTILINGUAL_WORDS, multilingual_prompts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
from openai_checks import client, model_id  # noqa: E402

REPLACEMENT = "\ufffd"
ARGS = ["--max-total-tokens", "4096"]


def cases() -> list[tuple[str, dict]]:
    """(prompt, sampling params): greedy on corpus openings, seeded sampling on random words.
    Odd lengths so that some outputs end inside a character."""
    rng = random.Random(7)
    out = [
        (p, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
        for p, n in zip(multilingual_prompts(3), (29, 40, 33))
    ]
    for seed in range(3):
        prompt = " ".join(rng.choice(_MULTILINGUAL_WORDS) for _ in range(rng.randint(1, 4)))
        sp = {"max_new_tokens": rng.randint(20, 45), "temperature": 1.0, "seed": seed,
              "ignore_eos": True}
        out.append((prompt, sp))
    return out


CASES = cases()


@pytest.fixture(scope="module")
def model(multilingual_model) -> str:
    return multilingual_model


@pytest.fixture(scope="module")
def tok(model):
    return AutoTokenizer.from_pretrained(model)


@pytest.fixture(scope="module", params=["unified", "pd"])
def target(request, model, log_dir):
    """(url to send requests to, urls whose KV pool must be whole afterwards)."""
    if request.param == "unified":
        proc = launch_server(model, log_dir, "stream-text-unified", ARGS)
        yield proc.url, [proc.url]
        proc.stop()
    else:
        c = launch_pd_cluster(model, f"{log_dir}/stream-text-pd", "mooncake", args=ARGS)
        yield c.url, [p.url for p in c.prefills + c.decodes]
        c.stop()


def generate(url: str, prompt: str, sp: dict) -> dict:
    r = requests.post(url + "/generate", json={"text": prompt, "sampling_params": sp},
                      timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def generate_stream(url: str, prompt: str, sp: dict) -> list[dict]:
    r = requests.post(url + "/generate", json={"text": prompt, "sampling_params": sp,
                      "stream": True}, stream=True, timeout=120)
    assert r.status_code == 200, r.text
    chunks = []
    for line in r.iter_lines():
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            chunks.append(json.loads(line[6:]))
    return chunks


def split_characters(tok, ids: list[int], text: str) -> int:
    """How many characters of ``text`` came from tokens that each hold only part of them."""
    partial = sum(1 for i in ids if REPLACEMENT in tok.decode([i]))
    whole = sum(1 for ch in text if len(ch.encode()) > 1 and ch != REPLACEMENT)
    return min(partial, whole)


def check_native(url: str, tok, prompt: str, sp: dict) -> dict:
    full = generate(url, prompt, sp)
    chunks = generate_stream(url, prompt, sp)
    assert len(chunks) > 1
    assert chunks[-1]["output_ids"] == full["output_ids"]  # the same generation
    sent = ""
    for ch in chunks:  # cumulative text: only ever appended to, never a split character
        assert ch["text"].startswith(sent) and full["text"].startswith(ch["text"]), (sent, ch)
        sent = ch["text"]
    assert sent == full["text"]
    return full


def test_outputs_hold_characters_split_over_tokens(target, tok):
    url, pools = target
    split = 0
    for prompt, sp in CASES:
        full = generate(url, prompt, sp)
        split += split_characters(tok, full["output_ids"], full["text"])
    # Could fail: a model whose output were ASCII, or whole characters per token, tests nothing.
    assert split >= 20, split
    for p in pools:
        assert_pool_whole(p)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_native_generate_stream_equals_non_stream(target, tok, case):
    url, pools = target
    prompt, sp = CASES[case]
    check_native(url, tok, prompt, sp)
    for p in pools:
        assert_pool_whole(p)


@pytest.mark.parametrize("case", range(len(CASES)))
def test_openai_streams_equal_non_stream(target, tok, case):
    url, pools = target
    prompt, sp = CASES[case]
    native = generate(url, prompt, sp)["text"]
    c, model = client(url), model_id(url)
    args = dict(model=model, max_tokens=sp["max_new_tokens"], temperature=sp["temperature"],
                seed=sp.get("seed"), extra_body={"ignore_eos": True})

    full = c.completions.create(prompt=prompt, **args).choices[0].text
    deltas = [ch.choices[0].text for ch in c.completions.create(prompt=prompt, stream=True, **args)
              if ch.choices]
    assert full == native and "".join(deltas) == full
    sent = [d for d in deltas if d]  # only the flush at the end may end inside a character
    assert not any(d.endswith(REPLACEMENT) for d in sent[:-1])

    messages = [{"role": "user", "content": prompt}]
    chat = c.chat.completions.create(messages=messages, **args).choices[0].message.content
    parts = [ch.choices[0].delta.content or "" for ch in
             c.chat.completions.create(messages=messages, stream=True, **args) if ch.choices]
    assert "".join(parts) == chat
    for p in pools:
        assert_pool_whole(p)


def test_stop_strings_are_never_streamed(target, tok):
    """Stop at a multi-byte word of the greedy output: every route streams exactly the text
    before it, nothing of the stop string (not even its first bytes or characters)."""
    url, pools = target
    prompt, sp = CASES[0]
    text = generate(url, prompt, sp)["text"]
    words = [w for w in text.split() if any(len(ch.encode()) > 1 for ch in w)]
    assert len(words) >= 3, text
    stop = words[2]
    at = text.find(stop)
    want = text[:at]
    stop_sp = {**sp, "stop": [stop]}
    full = check_native(url, tok, prompt, stop_sp)
    assert full["text"] == want and full["meta_info"]["finish_reason"]["matched"] == stop

    c, model = client(url), model_id(url)
    args = dict(model=model, max_tokens=sp["max_new_tokens"], temperature=0, stop=[stop],
                extra_body={"ignore_eos": True})
    deltas = [ch.choices[0].text for ch in c.completions.create(prompt=prompt, stream=True, **args)
              if ch.choices]
    assert "".join(deltas) == want
    # no_stop_trim keeps the stop string: then it is streamed too.
    keep = check_native(url, tok, prompt, {**stop_sp, "no_stop_trim": True})
    assert keep["text"] == text[: at + len(stop)]
    for p in pools:
        assert_pool_whole(p)


def test_completion_logprobs_stream_like_non_stream(target):
    """Token texts (U+FFFD for a part of a character, as OpenAI sends them) and their text
    offsets are the same streamed and not."""
    url, pools = target
    prompt, sp = CASES[1]
    c, model = client(url), model_id(url)
    args = dict(model=model, prompt=prompt, max_tokens=sp["max_new_tokens"], temperature=0,
                logprobs=1, extra_body={"ignore_eos": True})
    full = c.completions.create(**args).choices[0].logprobs
    tokens, offsets = [], []
    for ch in c.completions.create(stream=True, **args):
        if ch.choices and ch.choices[0].logprobs:
            tokens += ch.choices[0].logprobs.tokens
            offsets += ch.choices[0].logprobs.text_offset
    assert REPLACEMENT in "".join(tokens)  # some tokens hold part of a character
    assert (tokens, offsets) == (full.tokens, full.text_offset)
    for p in pools:
        assert_pool_whole(p)
