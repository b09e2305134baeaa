"""Fuzzing every HTTP route of a running server (hypothesis): random and malformed bodies and
query strings never get a 500, a 4xx always says what is wrong, and afterwards the server still
answers a normal request with its KV pools whole.

The routes are the server's own /openapi.json paths (plus /metrics). Bodies mix each route's
real field names (SGLang's and OpenAI's) with random keys, and the values are any JSON (huge and
negative integers, NaN and infinities, nesting, wrong types), or raw bytes that are not JSON.
Servers: the session's unified reference server and the session's Mooncake prefill and decode
(their own /generate needs bootstrap fields; a fuzzed request that happens to be valid may wait
for its other half, so every call has a short client timeout: the disconnect aborts it).
"""

from __future__ import annotations

import json
import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pool_checks import assert_pool_whole

CLIENT_TIMEOUT = 2.0
SAMPLING = ["max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "min_p",
            "stop", "stop_token_ids", "ignore_eos", "n", "frequency_penalty", "presence_penalty",
            "repetition_penalty", "skip_special_tokens", "spaces_between_special_tokens",
            "json_schema", "regex", "sampling_seed"]
BOOTSTRAP = ["bootstrap_host", "bootstrap_port", "bootstrap_room"]
FIELDS = {
    "/generate": ["text", "input_ids", "sampling_params", "rid", "return_logprob",
                  "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs", "stream",
                  *BOOTSTRAP],
    "/v1/completions": ["model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream",
                        "stop", "logprobs", "echo", "seed", "user", "stream_options", "suffix",
                        "best_of", "logit_bias", "frequency_penalty", "presence_penalty",
                        "ignore_eos", *BOOTSTRAP],
    "/v1/chat/completions": ["model", "messages", "max_tokens", "max_completion_tokens",
                             "temperature", "top_p", "n", "stream", "stream_options", "stop",
                             "logprobs", "top_logprobs", "tools", "tool_choice",
                             "response_format", "seed", *BOOTSTRAP],
    "/abort_request": ["rid", "abort_all"],
}
QUERY_KEYS = ["include", "rid", "model", "x"]

# Integers around every boundary a field may have; small ones keep valid generations short.
ints = st.one_of(st.integers(-3, 8), st.sampled_from(
    [-(2**63), -(2**31), 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30]))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e-30, 1e308, -1.0, 2.0]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.dictionaries(st.text(max_size=8), c, max_size=4)),
    max_leaves=8)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["system", "user", "assistant", "tool"]), values),
     "content": st.one_of(st.text(max_size=12), values)}), max_size=3)
raw_bodies = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"", b"{", b"null", b"[]", b'"x"', b"1e999", b"\xff\xfe{}", b"[" * 5000,
                     b'{"text": "\\ud800"}', b'{"text": NaN}', b'{"rid": [[]]}',
                     b'{"text": "a", "sampling_params": {"max_new_tokens": 1e400}}']),
)


def field_value(key: str):
    if key == "sampling_params":
        return st.one_of(values, st.dictionaries(st.sampled_from(SAMPLING), values, max_size=4))
    if key == "messages":
        return st.one_of(messages, values)
    if key in ("text", "prompt"):
        return st.one_of(st.text(max_size=20), values)
    return values


@st.composite
def json_body(draw, path: str):
    keys = draw(st.lists(st.sampled_from(FIELDS[path]), max_size=5, unique=True))
    body = {k: draw(field_value(k)) for k in keys}
    body.update(draw(st.dictionaries(st.text(max_size=8), values, max_size=2)))
    return body


def routes(url: str) -> list[tuple[str, str]]:
    r = requests.get(url + "/openapi.json", timeout=10)
    assert r.status_code == 200, r.text  # was a 500 with --enable-metrics
    paths = r.json()["paths"]
    out = [(m.upper(), p.replace("{model}", "x")) for p, ms in paths.items() for m in ms]
    return out + [("GET", "/metrics")]


@st.composite
def calls(draw, route_list: list[tuple[str, str]]):
    method, path = draw(st.sampled_from(route_list))
    query = draw(st.dictionaries(st.sampled_from(QUERY_KEYS), st.text(max_size=10), max_size=2))
    body = None
    if method in ("POST", "PUT"):
        if path in FIELDS and draw(st.booleans()):
            body = json.dumps(draw(json_body(path)), allow_nan=True).encode()
        else:
            body = draw(raw_bodies)
    return method, path, query, body


def check_call(url: str, method: str, path: str, query: dict, body: bytes | None) -> None:
    where = f"{method} {path} ?{query} body={body[:300] if body else body!r}"
    try:
        r = requests.request(method, url + path, params=query, data=body, stream=True,
                             headers={"Content-Type": "application/json"},
                             timeout=CLIENT_TIMEOUT)
        content = b"".join(r.iter_content(65536))
    except requests.Timeout:
        return  # a valid request still running (or waiting for its other PD half): dropped
    except requests.ConnectionError as e:  # a read timeout in the middle of a stream
        if "timed out" in str(e):
            return
        raise AssertionError(f"{where}: connection broke: {e}") from e
    assert r.status_code < 500, f"{where}: {r.status_code} {content[:500]!r}"
    if r.status_code >= 400:  # SGLang's {"error": {"message"}} or FastAPI's {"detail"}
        err = json.loads(content)
        msg = err["error"]["message"] if "error" in err else err.get("detail")
        assert isinstance(msg, str) and msg, f"{where}: {content[:300]!r}"
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert b'"code": 500' not in content and b'"code":500' not in content, \
            f"{where}: {content[:500]!r}"


def still_serves(url: str) -> None:
    assert requests.get(url + "/health", timeout=10).status_code == 200
    assert_pool_whole(url)


def cluster_still_serves(cluster) -> None:
    """A normal request through the cluster's mini_lb answers; every server healthy and whole."""
    r = requests.post(cluster.url + "/generate", json={
        "text": "Once upon a time", "sampling_params": {"max_new_tokens": 4, "temperature": 0}},
        timeout=60)
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 4
    for p in cluster.prefills + cluster.decodes:
        still_serves(p.url)


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def test_unified_server_survives_fuzzed_requests(unified):
    route_list = routes(unified)
    assert ("POST", "/generate") in route_list and ("POST", "/abort_request") in route_list

    @FUZZ
    @given(calls(route_list))
    def fuzz(call):
        check_call(unified, *call)

    fuzz()
    r = requests.post(unified + "/generate", json={
        "text": "Once upon a time", "sampling_params": {"max_new_tokens": 4, "temperature": 0}},
        timeout=60)
    assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 4
    still_serves(unified)


@pytest.mark.parametrize("side", ["prefill", "decode"])
def test_pd_server_survives_fuzzed_requests(pd_clusters, side):
    cluster = pd_clusters("mooncake")
    url = (cluster.prefills if side == "prefill" else cluster.decodes)[0].url
    route_list = routes(url)

    @settings(FUZZ, max_examples=150)
    @given(calls(route_list))
    def fuzz(call):
        check_call(url, *call)

    fuzz()
    requests.post(url + "/abort_request", json={"abort_all": True}, timeout=10)
    cluster_still_serves(cluster)


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/abort_request"])
def test_json_python_reads_but_no_request_can_hold_is_a_400(unified, path):
    """Each was a 500 (found by the fuzzing above): NaN and Infinity, which json.loads reads,
    a lone UTF-16 surrogate (the tokenizer cannot encode it), nesting past the recursion limit."""
    assert math.isnan(json.loads("NaN"))
    for body, words in [
        (b'{"text": "a", "prompt": "a", "sampling_params": {"temperature": NaN}}', "NaN"),
        (b'{"text": "a", "prompt": "a", "max_tokens": -Infinity}', "-Infinity"),
        (b'{"text": "\\ud800", "prompt": "\\udfff", "rid": "\\ud800"}', "surrogate"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ]:
        r = requests.post(unified + path, data=body, timeout=30)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (body[:80], r.text)
    ok = requests.post(unified + "/generate", data='{"text": "\\ud83d\\ude00 ok", '
                       '"sampling_params": {"max_new_tokens": 2}}', timeout=30)
    assert ok.status_code == 200, ok.text  # a surrogate pair is a character


# mini_lb serves no /openapi.json: its routes, less /register (it adds a server: validated, but
# unauthenticated as SGLang's mini_lb's, so fuzzing it would reroute the shared cluster).
LB_ROUTES = [("POST", "/generate"), ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
             ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/workers"),
             ("GET", "/health_generate"), ("GET", "/get_server_info"), ("GET", "/model_info"),
             ("POST", "/flush_cache"), ("GET", "/metrics"), ("POST", "/no_such_route")]


def test_mini_lb_survives_fuzzed_requests(pd_clusters):
    cluster = pd_clusters("mooncake")

    @settings(FUZZ, max_examples=150)
    @given(calls(LB_ROUTES))
    def fuzz(call):
        check_call(cluster.url, *call)

    fuzz()
    cluster_still_serves(cluster)
