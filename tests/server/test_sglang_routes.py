"""SGLang 0.5's routes and copied flags on one real server: --api-key, /server_info, /model_info,
/get_load, /v1/loads, /v1/models/{model}, /abort_request abort_all, --max-queued-requests (429),
--stream-interval, --enable-cache-report, --chat-template, --log-requests."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
import requests

from pool_checks import idle_and_whole
from sglang.test.server_utils import launch_server

KEY = "sk-test-0123456789"
H = {"Authorization": f"Bearer {KEY}"}
PREAMBLE = "### A CUSTOM TEMPLATE PREAMBLE ###\n"
TEMPLATE = PREAMBLE + (
    "{%- for m in messages -%}{{- m['role'] + ': ' + m['content'] + '\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'assistant: ' -}}{%- endif -%}"
)
LONG = {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}


@pytest.fixture(scope="module")
def server(tiny_model, log_dir, tmp_path_factory):
    tpl = tmp_path_factory.mktemp("tpl") / "custom.jinja"
    tpl.write_text(TEMPLATE)
    proc = launch_server(tiny_model, log_dir, "sglang_routes", [
        "--max-total-tokens", "4096", "--context-length", "4096", "--api-key", KEY,
        "--max-running-requests", "1", "--max-queued-requests", "1", "--stream-interval", "3",
        "--enable-cache-report", "--chat-template", str(tpl), "--log-requests",
        "--schedule-policy", "lpm",
    ])
    yield proc
    proc.stop()


@pytest.fixture
def url(server):
    yield server.url
    deadline = time.time() + 20
    state = _state(server.url)
    while not idle_and_whole(state) and time.time() < deadline:
        time.sleep(0.2)
        state = _state(server.url)
    assert idle_and_whole(state), f"KV pool not whole: {state}"


def _state(url):
    return requests.get(url + "/server_info", headers=H, timeout=10).json()["internal_states"][0]


def _load(url):
    return requests.get(url + "/get_load", headers=H, timeout=10).json()[0]


def _wait_load(url, **want):
    deadline = time.time() + 60
    while time.time() < deadline:
        load = _load(url)
        if all(load[k] == v for k, v in want.items()):
            return load
        time.sleep(0.05)
    raise AssertionError(f"load never reached {want}: {_load(url)}")


def _stream(url, body, out):
    r = requests.post(url + "/generate", headers=H, json={**body, "stream": True}, stream=True,
                      timeout=120)
    out.append(r.status_code)
    for line in r.iter_lines():
        if line.startswith(b"data: {"):
            out.append(json.loads(line[6:]))


def _start_stream(url, body):
    out: list = []
    t = threading.Thread(target=_stream, args=(url, body, out), daemon=True)
    t.start()
    return t, out


def test_every_route_but_health_needs_the_key(url, server):
    model = server_model(url)
    gets = ["/server_info", "/get_server_info", "/model_info", "/get_model_info", "/get_load",
            "/v1/loads", "/v1/models", f"/v1/models/{model}", "/flush_cache"]
    posts = {"/generate": {"text": "hi"}, "/v1/completions": {"model": model, "prompt": "hi"},
             "/v1/chat/completions": {"model": model, "messages": [{"role": "user",
                                                                    "content": "hi"}]},
             "/abort_request": {"rid": "x"}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path in gets:
            r = requests.get(url + path, headers=headers, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["message"], (path, headers)
        for path, body in posts.items():
            r = requests.post(url + path, headers=headers, json=body, timeout=10)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    for path in ("/health", "/health_generate", "/ready"):
        assert requests.get(url + path, timeout=30).status_code == 200, path
    for path in gets:
        assert requests.get(url + path, headers=H, timeout=10).status_code == 200, path


def server_model(url):
    return requests.get(url + "/model_info", headers=H, timeout=10).json()["served_model_name"]


def test_openai_client_with_the_key(url):
    model = server_model(url)
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    r = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4,
                                  temperature=0)
    assert r.usage.completion_tokens == 4
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=model, prompt="hi", max_tokens=2)


def test_info_routes_have_sglang_fields_and_aliases_agree(url):
    get = lambda p: requests.get(url + p, headers=H, timeout=10).json()  # noqa: E731
    mi = get("/model_info")
    assert mi == get("/get_model_info")
    for k in ("model_path", "tokenizer_path", "is_generation", "preferred_sampling_params",
              "weight_version"):
        assert k in mi
    si, alias = get("/server_info"), get("/get_server_info")
    assert si.keys() == alias.keys()
    assert si["version"] and si["internal_states"][0]["kv_pool"]["total_pages"] > 0
    assert si["api_key"] == "<set>"  # the key itself is never shown
    assert si["max_queued_requests"] == alias["max_queued_requests"] == 1
    load = get("/get_load")
    assert load == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]
    v1 = get("/v1/loads")
    assert v1["dp_rank_count"] == 1 and v1["loads"][0]["num_total_reqs"] == 0
    assert v1["loads"][0]["max_total_num_tokens"] == si["max_total_num_tokens"]
    assert v1["aggregate"]["total_reqs"] == 0 and "total_tokens" in v1["aggregate"]
    for q in ("include=bogus", "dp_rank=1", "format=prometheus"):
        r = requests.get(url + "/v1/loads?" + q, headers=H, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["message"], q


def test_abort_all_ends_running_and_waiting_requests(url):
    a, out_a = _start_stream(url, {"text": "The lighthouse keeper", "sampling_params": LONG})
    _wait_load(url, num_reqs=1)
    load = _wait_load(url, num_reqs=1, num_waiting_reqs=0)
    assert load["num_tokens"] > 0
    b, out_b = _start_stream(url, {"text": "The baker", "sampling_params": LONG})
    _wait_load(url, num_reqs=2, num_waiting_reqs=1)
    for bad in ({}, {"rid": 5}, {"abort_all": "yes"}, {"rid": "x", "abort_all": True}, [1]):
        r = requests.post(url + "/abort_request", headers=H, json=bad, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["message"], bad
    r = requests.post(url + "/abort_request", headers=H, json={"abort_all": True}, timeout=10)
    assert r.status_code == 200
    a.join(60), b.join(60)
    # the running one streamed, then ended with an abort
    assert out_a[0] == 200 and out_a[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(out_a[-1]["output_ids"]) < LONG["max_new_tokens"]
    # the waiting one never started: an HTTP error, before any chunk (as SGLang's 499)
    assert out_b == [499]


def test_max_queued_requests_gives_429(url):
    a, out_a = _start_stream(url, {"text": "Once upon a time", "sampling_params": LONG})
    _wait_load(url, num_reqs=1, num_waiting_reqs=0)
    b, out_b = _start_stream(url, {"text": "The baker", "sampling_params": LONG})
    _wait_load(url, num_reqs=2, num_waiting_reqs=1)
    r = requests.post(url + "/generate", headers=H, timeout=30,
                      json={"text": "hi", "sampling_params": {"max_new_tokens": 2}})
    assert r.status_code == 429 and "--max-queued-requests 1" in r.json()["error"]["message"]
    r = requests.post(url + "/generate", headers=H, timeout=30, json={
        "text": "hi", "sampling_params": {"max_new_tokens": 2}, "stream": True})
    assert r.status_code == 429
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=server_model(url), prompt="hi", max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=server_model(url), max_tokens=2,
                                       messages=[{"role": "user", "content": "hi"}])
    requests.post(url + "/abort_request", headers=H, json={"abort_all": True}, timeout=10)
    a.join(60), b.join(60)
    assert out_a[-1]["meta_info"]["finish_reason"]["type"] == "abort"


def test_stream_interval_sends_every_third_token(url):
    n = 30
    sp = {"max_new_tokens": n, "ignore_eos": True, "temperature": 0}
    t, out = _start_stream(url, {"text": "The lighthouse keeper", "sampling_params": sp})
    t.join(60)
    counts = [len(c["output_ids"]) for c in out[1:]]
    assert counts[-1] == n
    # the first token at once, then every 3 (outputs that arrive together merge into one chunk)
    assert set(counts) <= {1 + 3 * k for k in range(n // 3 + 1)} | {n}, counts
    full = requests.post(url + "/generate", headers=H, timeout=60, json={
        "text": "The lighthouse keeper", "sampling_params": sp}).json()
    assert out[-1]["text"] == full["text"]


def test_cache_report_and_chat_template(url):
    from transformers import AutoTokenizer

    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    model = server_model(url)
    msgs = [{"role": "user", "content": "Tell me about the lighthouse keeper and the baker "
                                        "who lived by the sea in the small village."}]
    first = client.chat.completions.create(model=model, messages=msgs, max_tokens=2)
    second = client.chat.completions.create(model=model, messages=msgs, max_tokens=2)
    assert first.usage.prompt_tokens_details is not None
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 2
    tok = AutoTokenizer.from_pretrained(model)
    ours = tok.apply_chat_template(msgs, chat_template=TEMPLATE, add_generation_prompt=True,
                                   tokenize=True)
    theirs = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ours = ours["input_ids"] if hasattr(ours, "keys") else ours
    theirs = theirs["input_ids"] if hasattr(theirs, "keys") else theirs
    assert len(ours) != len(theirs)
    assert first.usage.prompt_tokens == len(ours)


def test_log_requests_logs_arrival_and_finish(url, server):
    r = requests.post(url + "/generate", headers=H, timeout=60, json={
        "text": "The baker", "rid": "logged-request-1", "sampling_params": {"max_new_tokens": 3}})
    assert r.status_code == 200
    time.sleep(0.5)
    log = open(server.log_path, errors="replace").read()
    assert "Receive: rid=logged-request-1" in log
    assert "Finish: rid=logged-request-1" in log and "completion_tokens=3" in log
