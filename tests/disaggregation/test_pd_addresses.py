"""A PD pair whose servers live on distinct loopback addresses, as on two hosts (issue 12, "Several
nodes"): every address a server advertises is one its peer can reach, never a wildcard rewritten
to 127.0.0.1.

The prefill binds every interface (``--host 0.0.0.0``) and is told its address by SGLang's
``SGLANG_HOST_IP=127.0.0.2`` (what a wildcard advertises: ``utils.network.advertised_host``); the
decode runs on ``--host 127.0.0.3``. Mooncake (TCP) or NIXL (UCX) moves the pages; mini_lb is in
front. Checked: the answers equal the session's unified server's; the prefill's bootstrap
registration names 127.0.0.2 (rank_ip, Mooncake session) and no 127.0.0.1 or 0.0.0.0 anywhere;
the decode registered at the prefill from 127.0.0.3; both KV pools whole afterwards. Listening
sockets: ours (HTTP, bootstrap, control) where --host says. Mooncake's own listeners bind 0.0.0.0
whatever they are told (``mooncake/transfer_engine.py``), so no socket is on 127.0.0.1. UCX
listens on the address of each interface it uses, and is given only the one holding --host
(``nixl/ucx_devices.py``): for 127.0.0.3 that is ``lo``, whose address is 127.0.0.1, so the
NIXL decode's UCX listeners are on 127.0.0.1 and on no other interface's address.
"""

from __future__ import annotations

import json
import re
from socket import AF_INET, AF_INET6
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from pool_checks import assert_pool_whole

from sglang.srt.utils.network import free_port
from sglang.test.server_utils import launch_server, spawn, wait_all

PREFILL_IP, DECODE_IP = "127.0.0.2", "127.0.0.3"
# the same as conftest.py's reference server
ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens", "4096",
        "--context-length", "1024"]
STORY = ("The river ran past the old mill, and the children who lived in the village liked to "
         "watch the water turn the wheel. ")
PROMPTS = ["Once upon a time", STORY + "One day", STORY + "The mill", "Hello, my name is"]


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def pair(request, tiny_model, log_dir):
    backend = request.param
    args = [*ARGS, "--disaggregation-transfer-backend", backend]
    logs = f"{log_dir}/pd-addresses-{backend}"
    bport, port, lb_port = free_port(PREFILL_IP), free_port(PREFILL_IP), free_port()
    # all three start at once (as launch_pd_cluster: mini_lb needs its servers only at a request)
    prefill = spawn("prefill", [
        "-m", "sglang.launch_server", "--model-path", tiny_model, *args,
        "--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", str(bport),
        "--host", "0.0.0.0", "--port", str(port)],
        f"http://{PREFILL_IP}:{port}", logs, {"SGLANG_HOST_IP": PREFILL_IP})
    decode = launch_server(tiny_model, logs, "decode", [*args, "--disaggregation-mode", "decode"],
                           host=DECODE_IP, wait=False)
    lb = spawn("mini_lb", [
        "-m", "sglang.srt.disaggregation.mini_lb", "--host", "127.0.0.1", "--port", str(lb_port),
        "--prefill", prefill.url, str(bport), "--decode", decode.url],
        f"http://127.0.0.1:{lb_port}", logs)
    procs = wait_all([prefill, decode, lb])
    try:
        yield (*procs, bport, backend)
    finally:
        for p in reversed(procs):
            p.stop()


def _generate(url: str, text: str) -> tuple[str, list[int]]:
    r = requests.post(url + "/generate", timeout=120, json={
        "text": text, "sampling_params": {"temperature": 0, "max_new_tokens": 16}})
    assert r.status_code == 200, r.text
    return r.json()["text"], r.json()["output_ids"]


def _listeners(proc) -> set[tuple[str, int]]:
    root = psutil.Process(proc.popen.pid)
    return {(c.laddr.ip, c.laddr.port) for p in (root, *root.children(recursive=True))
            for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}


def test_pair_on_two_addresses_answers_as_unified(pair, unified):
    prefill, decode, lb, bport, _ = pair
    with ThreadPoolExecutor(len(PROMPTS)) as ex:  # concurrent: batched on both servers
        got = list(ex.map(lambda p: _generate(lb.url, p), PROMPTS))
    assert got == [_generate(unified, p) for p in PROMPTS]
    for server in (prefill, decode):
        assert_pool_whole(server.url)


def _interface_addresses() -> dict[str, set[str]]:
    return {name: {a.address.split("%")[0] for a in addrs if a.family in (AF_INET, AF_INET6)}
            for name, addrs in psutil.net_if_addrs().items()}


def test_every_advertised_address_is_the_servers_own(pair):
    prefill, decode, lb, bport, backend = pair
    _generate(lb.url, "Hello")  # the decode has registered at the prefill (also when run alone)
    r = requests.get(f"http://{PREFILL_IP}:{bport}/route?engine_rank=0", timeout=10)
    assert r.status_code == 200, r.text
    reg = r.json()
    assert reg["rank_ip"] == PREFILL_IP and reg["transfer"]["backend"] == backend
    assert "127.0.0.1" not in r.text and "0.0.0.0" not in r.text, reg
    # the decode's own view, and the prefill's record of its registration (its log)
    dinfo = requests.get(decode.url + "/get_server_info", timeout=10).json()
    dtransfer = dinfo["internal_states"][0]["disaggregation"]
    seen = re.findall(r"Decode (\S+) registered its KV memory \((.*)\)", prefill.log_tail(10**6))
    assert seen, prefill.log_tail(40)
    endpoint, transfer = seen[-1]
    assert endpoint.startswith(f"{DECODE_IP}:"), seen
    if backend == "mooncake":
        assert reg["transfer"]["session_id"].startswith(f"{PREFILL_IP}:")
        assert dtransfer["session_id"].startswith(f"{DECODE_IP}:")
        assert f"'session_id': '{DECODE_IP}:" in transfer, seen
    else:  # UCX: every interface for the wildcard prefill, the decode's (lo) for 127.0.0.3
        loopback = next(n for n, a in _interface_addresses().items() if "127.0.0.1" in a)
        assert reg["transfer"]["ucx_net_devices"] == "all", reg
        assert dtransfer["ucx_net_devices"] == loopback, dtransfer
        assert f"'agent_name': 'sglang-decode-{DECODE_IP}-" in transfer, seen
    # the prefill's HTTP, bootstrap and control sockets listen where --host says (every
    # interface), the decode's on its address; no socket of ours on 127.0.0.1
    control_port = reg["rank_port"]
    for server, own in ((prefill, "0.0.0.0"), (decode, DECODE_IP)):
        socks = _listeners(server)
        assert (own, int(server.url.rsplit(":", 1)[1])) in socks, (server.name, socks)
        if backend == "mooncake":
            assert not [s for s in socks if s[0] in ("127.0.0.1", "::1")], (server.name, socks)
    assert {("0.0.0.0", bport), ("0.0.0.0", control_port)} <= _listeners(prefill)
    if backend == "nixl":  # the decode: UCX's listeners on lo's address, none elsewhere
        socks = _listeners(decode)
        ucx = {s for s in socks if s[0] != DECODE_IP}
        assert ucx and {ip for ip, _ in ucx} <= _interface_addresses()[loopback], socks
    info = json.dumps(requests.get(prefill.url + "/get_server_info", timeout=10).json())
    assert "127.0.0.1" not in info, info[:2000]
