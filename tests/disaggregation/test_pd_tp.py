"""PD between tensor-parallel servers end to end: prefill and decode servers launched with
``--tp-size`` (one scheduler process and one KV manager per rank, gloo), mini_lb in front. P tp2 /
D tp2, P tp2 / D tp1 and P tp1 / D tp2 on Mooncake and on NIXL (P tp2 / D tp1 on NIXL also behind
the real sglang-router) give the session's unified tp1 server's greedy answers, batched, for a
prompt longer than the chunk size and for a repeated prompt (a prefix hit on the prefill); every
pool is whole afterwards. A decode sent to a prefill it cannot use is refused at the handshake
naming both TP sizes, and both keep serving.

Servers are shared: the tp1 servers are the session's 1P1D clusters' (tests/conftest.py); this
module adds a tp2 prefill and a tp2 decode per engine, and one mini_lb per pair (a prefill serves
decodes of any TP size)."""

from __future__ import annotations

import importlib.util
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from pool_checks import assert_pool_whole

from sglang.test.server_utils import PDCluster, free_port, launch_router, launch_server, start

# the reference server's (tests/conftest.py REFERENCE_ARGS)
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024"]
STORY = ("Once upon a time there was a little robot who lived in a quiet town by the sea. "
         "Every morning it walked to the harbour and counted the boats. ")
PROMPTS = ["Hello, my name is", STORY + "One day", STORY * 2 + "In the end"]  # > 32 tokens
GREEDY = {"temperature": 0, "max_new_tokens": 12}
# (backend, mode, tp) of the servers this module launches; the tp1 ones are the session's
# 1P1D clusters' (tests/conftest.py)
SERVERS = [(b, mode, 2) for b in ("mooncake", "nixl") for mode in ("prefill", "decode")]
# (backend, prefill tp, decode tp)
PAIRS = [(b, p, d) for b in ("mooncake", "nixl") for p, d in ((2, 2), (2, 1), (1, 2))]
ROUTED = ("nixl", 2, 1)  # also behind sglang-router
CORRUPT = "corrupt-row-"  # rids whose metadata row rank 1 of the Mooncake tp2 decode misreads


@pytest.fixture(scope="module")
def tp_servers(tiny_model, log_dir, pd_clusters):
    """{(backend, mode, tp): server}, {pair: mini_lb url}, {(backend, tp): bootstrap port}."""
    ports = {(b, tp): free_port() for b, mode, tp in SERVERS if mode == "prefill"}
    servers = {}
    for backend in ("mooncake", "nixl"):
        c = pd_clusters(backend)
        servers[backend, "prefill", 1], servers[backend, "decode", 1] = c.prefills[0], c.decodes[0]
        ports[backend, 1] = c.bootstrap_ports[0]

    def launch(spec):
        backend, mode, tp = spec
        port = ports[backend, 2]
        return launch_server(tiny_model, f"{log_dir}/pd-tp", f"{backend}-{mode}-tp{tp}", [
            *ARGS, "--disaggregation-mode", mode, "--disaggregation-transfer-backend", backend,
            "--disaggregation-bootstrap-port", str(port), "--tp-size", str(tp)],
            env={"SGLANG_TEST_DISAGG_CORRUPT_METADATA": f"{CORRUPT}:1"}
            if (backend, mode) == ("mooncake", "decode") else None)

    procs = []
    try:
        with ThreadPoolExecutor(len(SERVERS)) as ex:
            futs = {spec: ex.submit(launch, spec) for spec in SERVERS}
            for spec, f in futs.items():
                try:
                    servers[spec] = f.result()
                    procs.append(servers[spec])
                except Exception as e:
                    print(f"{spec} did not start: {e}")
        assert len(procs) == len(SERVERS), "a server did not start (see above)"

        def front(pair):
            backend, p_tp, d_tp = pair
            lb_port = free_port()
            argv = ["-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1", "--port",
                    str(lb_port), "--prefill", servers[backend, "prefill", p_tp].url,
                    "--decode", servers[backend, "decode", d_tp].url,
                    "--prefill-bootstrap-ports", str(ports[backend, p_tp])]
            return start(f"mini_lb-{backend}-p{p_tp}d{d_tp}", argv, f"http://127.0.0.1:{lb_port}",
                         f"{log_dir}/pd-tp")

        with ThreadPoolExecutor(len(PAIRS)) as ex:
            lbs = dict(zip(PAIRS, ex.map(front, PAIRS)))
        procs += lbs.values()
        if importlib.util.find_spec("sglang_router") is not None:
            backend, p_tp, d_tp = ROUTED
            pair = PDCluster([servers[backend, "prefill", p_tp]],
                             [servers[backend, "decode", d_tp]], None, [ports[backend, p_tp]])
            lbs["router", *ROUTED] = launch_router(pair, f"{log_dir}/pd-tp", name="router-tp")
            procs.append(lbs["router", *ROUTED])
        yield servers, {pair: lb.url for pair, lb in lbs.items()}, ports
    finally:
        for p in procs:
            p.stop()


def _gen(url: str, text, **kw):
    r = requests.post(url + "/generate", json={"text": text, "sampling_params": GREEDY, **kw},
                      timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _pools_whole(servers, backend, p_tp, d_tp):
    assert_pool_whole(servers[backend, "prefill", p_tp].url)
    assert_pool_whole(servers[backend, "decode", d_tp].url)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: f"{p[0]}-p{p[1]}d{p[2]}")
def test_tp_pairs_answer_as_unified_tp1(tp_servers, unified, pair):
    servers, lbs, _ = tp_servers
    want = [o["output_ids"] for o in _gen(unified, PROMPTS)]
    got = _gen(lbs[pair], PROMPTS)  # one batch: the three prompts at once
    assert [o["output_ids"] for o in got] == want
    again = _gen(lbs[pair], PROMPTS[2])  # the same prompt again: a prefix hit on the prefill
    assert again["meta_info"]["cached_tokens"] >= 32
    assert again["output_ids"] == want[2]
    _pools_whole(servers, *pair)


def test_tp_pair_behind_sglang_router(tp_servers, unified):
    """The real sglang-router (--pd-disaggregation) in front of a P tp2 / D tp1 pair."""
    pytest.importorskip("sglang_router", reason="sglang-router is not installed (make install)")
    servers, lbs, _ = tp_servers
    want = [o["output_ids"] for o in _gen(unified, PROMPTS)]
    for text, ids in zip(PROMPTS, want):  # the router takes one prompt per request
        assert _gen(lbs["router", *ROUTED], text)["output_ids"] == ids
    _pools_whole(servers, *ROUTED)


def test_corrupt_metadata_row_on_one_decode_rank_fails_the_request_on_all(tp_servers, unified):
    """Rank 1 of the tp2 decode reads a request's metadata row as another room's: the request
    ends with the corruption error on every rank (rank 0's row was fine; had it decoded alone,
    the ranks' next batches would differ and the server hang), the next request is served as
    the unified server serves it, and every pool is whole."""
    servers, lbs, _ = tp_servers
    pair = ("mooncake", 1, 2)
    r = requests.post(lbs[pair] + "/generate", timeout=120, json={
        "text": PROMPTS[0], "sampling_params": GREEDY, "rid": CORRUPT + "1"})
    assert r.status_code >= 400 and "Metadata corruption detected" in r.text, r.text
    want = _gen(unified, PROMPTS[1])["output_ids"]
    assert _gen(lbs[pair], PROMPTS[1])["output_ids"] == want
    _pools_whole(servers, *pair)


def test_handshake_refusal_names_both_tp_sizes(tp_servers):
    """The NIXL decode (tp1) sent to the Mooncake prefill (tp2): refused at its handshake."""
    servers, lbs, ports = tp_servers
    decode = servers["nixl", "decode", 1]
    r = requests.post(decode.url + "/generate", timeout=60, json={
        "text": "Hello", "sampling_params": GREEDY, "bootstrap_host": "127.0.0.1",
        "bootstrap_port": ports["mooncake", 2], "bootstrap_room": 4242})
    assert r.status_code >= 400, r.text
    msg = r.text
    assert "transfer backend differs: prefill mooncake, decode nixl" in msg, msg
    assert "prefill --tp-size 2, decode --tp-size 1" in msg, msg
    # both sides keep serving, their pools whole
    assert _gen(lbs["nixl", 2, 1], PROMPTS[0])["output_ids"]
    assert _gen(lbs["mooncake", 2, 1], PROMPTS[0])["output_ids"]
    _pools_whole(servers, "nixl", 2, 1)
    _pools_whole(servers, "mooncake", 2, 1)
