"""The README's three commands (prefill, decode with --base-gpu-id 1, mini_lb), as written there,
serve a unified server's greedy answers on Mooncake and on NIXL, and leave both pools whole.

The commands are read from README.md, so the test follows the README. Only the model path and
the ports change (free ports; the bootstrap port stays the default 8998 unless something else
holds it), and for NIXL both servers get ``--disaggregation-transfer-backend nixl`` as the
README says. The reference is the shared unified server of conftest.py.
"""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

import pytest
import requests

from pool_checks import assert_pool_whole
from sglang.test.server_utils import free_port, spawn, start, wait_all

README = Path(__file__).resolve().parents[2] / "README.md"
PROMPTS = ["Once upon a time", "The river ran past the old mill, and the children", "Hello"]
GREEDY = {"temperature": 0, "max_new_tokens": 16}


def readme_commands() -> list[list[str]]:
    text = README.read_text()
    block = text.split("The three commands SGLang users already type:", 1)[1]
    block = re.search(r"```bash\n(.*?)```", block, re.S).group(1)
    cmds = [shlex.split(line) for line in block.strip().splitlines()]
    assert len(cmds) == 3 and all(c[0] == "python" for c in cmds), cmds
    return [c[1:] for c in cmds]  # start() runs them with this interpreter


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def _subst(argv: list[str], old: str, new: str) -> list[str]:
    assert old in argv, (old, argv)
    return [new if a == old else a for a in argv]


@pytest.fixture(scope="module", params=["mooncake", "nixl"])
def readme_cluster(request, tiny_model, log_dir):
    prefill_cmd, decode_cmd, lb_cmd = readme_commands()
    assert "--base-gpu-id" in decode_cmd
    ports = {old: str(free_port()) for old in ("30000", "30001", "8000")}
    extra = ["--disaggregation-transfer-backend", "nixl"] if request.param == "nixl" else []
    prefill_cmd = _subst(prefill_cmd, "./models/tiny", tiny_model) + extra
    decode_cmd = _subst(decode_cmd, "./models/tiny", tiny_model) + extra
    for old, new in ports.items():
        prefill_cmd, decode_cmd = (
            [new if a == old else a for a in cmd] for cmd in (prefill_cmd, decode_cmd))
        lb_cmd = [a.replace(f":{old}", f":{new}") if a.startswith("http") else
                  (new if a == old else a) for a in lb_cmd]
    if not _port_free(8998):  # the default bootstrap port is taken: use another one
        bport = str(free_port())
        prefill_cmd += ["--disaggregation-bootstrap-port", bport]
        lb_cmd += ["--prefill-bootstrap-ports", bport]
    logs = f"{log_dir}/readme-{request.param}"
    url = lambda port: f"http://127.0.0.1:{port}"  # noqa: E731
    procs = []
    try:
        procs.append(spawn("prefill", prefill_cmd, url(ports["30000"]), logs))
        procs.append(spawn("decode", decode_cmd, url(ports["30001"]), logs))
        wait_all(procs)  # both start at once
        procs.append(start("mini_lb", lb_cmd, url(ports["8000"]), logs))
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


def test_readme_commands_serve_the_unified_answers(readme_cluster, unified):
    prefill, decode, lb = readme_cluster
    for prompt in PROMPTS:
        body = {"text": prompt, "sampling_params": GREEDY}
        ref = requests.post(unified + "/generate", json=body, timeout=120).json()
        r = requests.post(lb.url + "/generate", json=body, timeout=120)
        assert r.status_code == 200, f"{r.text}\n--- prefill log:\n{prefill.log_tail(30)}"
        out = r.json()
        assert out["output_ids"] == ref["output_ids"], prompt
        assert out["text"] == ref["text"]
    info = requests.get(decode.url + "/get_server_info", timeout=10).json()
    assert info["internal_states"][0]["disaggregation"]["transfer_queue"] == 0
    assert_pool_whole(prefill.url)
    assert_pool_whole(decode.url)
