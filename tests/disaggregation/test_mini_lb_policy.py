"""mini_lb's policies and sglang-router's command line, as pure logic (no process)."""

from __future__ import annotations

import asyncio

from sglang.srt.disaggregation.lb.args import parse_args
from sglang.srt.disaggregation.lb.bodies import request_text
from sglang.srt.disaggregation.lb.policy import BLOCK, PrefixAffinity, prefix_hashes
from sglang.srt.disaggregation.lb.pool import Prefill, ServerPool

PREFILLS = [Prefill("http://p0:1", 1), Prefill("http://p1:1", 2)]
DECODES = ["http://d0:1", "http://d1:1"]


def test_router_command_line() -> None:
    a = parse_args(("--pd-disaggregation --prefill http://p0:1 9000 --prefill http://p1:1 "
                    "--prefill http://p2:1 none --decode http://d0:1 --decode d1:1 "
                    "--policy cache_aware --host 127.0.0.1 --port 8000").split())  # fmt: skip
    assert a.prefill_urls == ["http://p0:1", "http://p1:1", "http://p2:1"]
    assert a.prefill_bootstrap_ports == [9000, None, None]  # router: no port means null
    assert a.decode_urls == ["http://d0:1", "http://d1:1"] and a.policy == "cache_aware"
    assert parse_args("--prefill http://p0:1 --decode d:1".split()).prefill_bootstrap_ports == \
        [8998]  # SGLang's mini_lb default without --pd-disaggregation


def test_request_text() -> None:
    assert request_text({"text": ["a", "b"]}, "generate") == "a"
    assert request_text({"input_ids": [1, 2]}, "generate") == "1 2"
    assert request_text({"prompt": "x"}, "v1/completions") == "x"
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert request_text(chat, "v1/chat/completions") == "user: hi"


def test_prefix_affinity() -> None:
    text = "x" * (3 * BLOCK + 5)
    assert len(prefix_hashes(text)) == 4 and prefix_hashes(text)[:2] == prefix_hashes(
        text[: 2 * BLOCK + 1])[:2]  # fmt: skip
    aff = PrefixAffinity(max_entries=8)
    aff.record(text, "http://p1:1")
    owner, share = aff.match(text[: 2 * BLOCK] + "y" * BLOCK, ["http://p0:1", "http://p1:1"])
    assert owner == "http://p1:1" and share == 2 / 3
    assert aff.match(text, ["http://p0:1"]) == (None, 0.0)  # the owner is gone


def choose(pool: ServerPool, text: str = "", load=None):
    async def fetch(url):
        return None if load is None else load[url]
    return asyncio.run(pool.choose(text, fetch))


def test_policies() -> None:
    rr = ServerPool(PREFILLS, DECODES, "round_robin")
    assert {(p.url, d) for p, d in (choose(rr) for _ in range(4))} == {
        (p.url, d) for p in PREFILLS for d in DECODES}  # every pair within P x D picks
    rnd = ServerPool(PREFILLS, DECODES, "random", seed=0)
    assert {choose(rnd)[0].url for _ in range(40)} == {p.url for p in PREFILLS}
    po2 = ServerPool(PREFILLS, DECODES, "power_of_two", seed=0)
    load = {"http://p0:1": 5.0, "http://p1:1": 0.0, "http://d0:1": 0.0, "http://d1:1": 9.0}
    assert all(choose(po2, load=load)[0].url == "http://p1:1" for _ in range(10))
    assert all(choose(po2, load=load)[1] == "http://d0:1" for _ in range(10))
    po2.begin("http://p0:1")  # no /get_load answer: its own in-flight count decides
    assert all(choose(po2)[0].url == "http://p1:1" for _ in range(10))
    ca = ServerPool(PREFILLS, DECODES, "cache_aware", seed=0)
    story = "The river ran past the old mill. " * 8
    first = choose(ca, story)[0]
    ca.begin(first.url)  # busier now, but still within the balance thresholds
    assert all(choose(ca, story + f" question {i}")[0] == first for i in range(5))
    other = choose(ca, "Something else entirely " * 8)[0]
    assert other != first  # a new prefix goes to the less busy prefill
