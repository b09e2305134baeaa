"""``--kv-cache-dtype`` across PD: the transfer engine moves the stored bytes, so both sides
must store one dtype.

Real processes on loopback (Mooncake over TCP): a prefill and a decode both storing fp8_e4m3
behind mini_lb give a unified fp8_e4m3 server's greedy answers; a decode storing bf16 paired
with the fp8 prefill (its own mini_lb) is refused at the bootstrap handshake, the request fails
with an error naming both dtypes and the flag, every page returns to the pool on both sides,
and both servers keep serving.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import free_port, launch_server, start

ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024"]
FP8 = [*ARGS, "--kv-cache-dtype", "fp8_e4m3"]
STORY = ("The river ran past the old mill, and the children who lived in the village liked to "
         "watch the water turn the wheel. ")
PROMPTS = ["Once upon a time", STORY + "One day", STORY * 2 + "The lighthouse keeper"]
GREEDY = {"temperature": 0, "max_new_tokens": 24}


def _lb(prefill: str, bport: int, decode: str, name: str, log_dir: str):
    port = free_port()
    return start(name, ["-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1",
                        "--port", str(port), "--prefill", prefill, "--decode", decode,
                        "--prefill-bootstrap-ports", str(bport)],
                 f"http://127.0.0.1:{port}", log_dir)


@pytest.fixture(scope="module")
def servers(tiny_model, log_dir):
    """Four servers started side by side (start-up is most of this module's time), then a
    mini_lb for each pairing."""
    d = f"{log_dir}/kv-dtype"
    bport = free_port()
    pd = ["--disaggregation-bootstrap-port", str(bport)]
    specs = {
        "unified": FP8,
        "prefill": [*FP8, "--disaggregation-mode", "prefill", *pd],
        "decode": [*FP8, "--disaggregation-mode", "decode", *pd],
        "bf16_decode": [*ARGS, "--kv-cache-dtype", "bf16", "--disaggregation-mode", "decode", *pd],
    }
    procs = {}
    try:
        with ThreadPoolExecutor(len(specs)) as ex:
            futs = {k: ex.submit(launch_server, tiny_model, d, k, a) for k, a in specs.items()}
            for k, f in futs.items():
                try:
                    procs[k] = f.result()
                except BaseException as e:  # keep collecting the others, to stop them
                    procs.setdefault("_error", e)
        if "_error" in procs:
            raise procs.pop("_error")
        pre = procs["prefill"].url
        with ThreadPoolExecutor(2) as ex:
            lb = ex.submit(_lb, pre, bport, procs["decode"].url, "mini_lb", d)
            bad = ex.submit(_lb, pre, bport, procs["bf16_decode"].url, "mini_lb-mismatch", d)
            procs["lb"], procs["mismatch_lb"] = lb.result(), bad.result()
    except BaseException:
        for p in procs.values():
            if hasattr(p, "stop"):
                p.stop()
        raise
    yield {k: p.url for k, p in procs.items()}
    for p in procs.values():
        p.stop()


def gen(url: str, prompt: str) -> requests.Response:
    return requests.post(url + "/generate", json={"text": prompt, "sampling_params": GREEDY},
                         timeout=120)


def info(url: str) -> dict:
    return requests.get(url + "/get_server_info", timeout=10).json()


def test_fp8_pd_equals_unified_fp8(servers):
    for url in (servers["unified"], servers["prefill"], servers["decode"]):
        i = info(url)
        assert i["kv_cache_dtype"] == i["kv_cache_storage_dtype"] == "fp8_e4m3", url
    bf16 = info(servers["bf16_decode"])
    assert bf16["kv_cache_storage_dtype"] == "bfloat16"
    assert 2 * info(servers["decode"])["kv_bytes_per_token"] == bf16["kv_bytes_per_token"]
    for prompt in PROMPTS:
        ref, out = gen(servers["unified"], prompt), gen(servers["lb"], prompt)
        assert ref.status_code == out.status_code == 200, (ref.text, out.text)
        assert out.json()["output_ids"] == ref.json()["output_ids"], prompt
        assert out.json()["text"] == ref.json()["text"]
    for name in ("prefill", "decode", "unified"):
        assert_pool_whole(servers[name])


def test_fp8_prefill_with_bf16_decode_is_refused_by_name(servers):
    r = gen(servers["mismatch_lb"], PROMPTS[1])
    assert r.status_code >= 400, r.text
    body = r.json()
    msg = body["error"]["message"] if "error" in body else body["meta_info"]["finish_reason"][
        "message"]
    assert "KV cache dtype differs: prefill fp8_e4m3, decode bfloat16" in msg, msg
    assert "--kv-cache-dtype" in msg, msg
    # no page is lost on either side of the refused pairing
    assert_pool_whole(servers["bf16_decode"])
    assert_pool_whole(servers["prefill"])
    # both keep serving: the fp8 prefill with its fp8 decode, as a unified fp8 server
    ref, out = gen(servers["unified"], PROMPTS[0]), gen(servers["lb"], PROMPTS[0])
    assert out.status_code == 200 and out.json()["output_ids"] == ref.json()["output_ids"]
    # and the refusal repeats (the decode does not cache a refused prefill as connected)
    r = gen(servers["mismatch_lb"], PROMPTS[0])
    assert r.status_code >= 400 and "prefill fp8_e4m3, decode bfloat16" in r.text
    assert_pool_whole(servers["bf16_decode"])
    assert_pool_whole(servers["prefill"])
    for name in ("prefill", "decode", "unified"):
        assert_pool_whole(servers[name])
