"""Bootstrap server routes, handshake checks, control messages, the fake backend and the class
factory (in-process; no transfer engine needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from sglang.srt.disaggregation.base.conn import KVPoll
from sglang.srt.disaggregation.common import messages
from sglang.srt.disaggregation.common.bootstrap_server import BootstrapServer
from sglang.srt.disaggregation.common.handshake import (
    PrefillUnavailable,
    check_health,
    compat_problem,
    fetch_prefill_info,
    register_prefill,
)
from sglang.srt.disaggregation.common.utils import free_port
from sglang.srt.disaggregation.fake.conn import FakeKVManager
from sglang.srt.disaggregation.utils import (
    FAKE_BOOTSTRAP_HOST,
    create_kv_receiver,
    create_kv_sender,
    get_kv_class,
)

INFO = {
    "rank_ip": "127.0.0.1",
    "rank_port": 5555,
    "backend": "mooncake",
    "page_size": 16,
    "kv_dtype": "torch.bfloat16",
    "model_shape": {"num_layers": 30, "num_kv_heads": 3, "head_dim": 64},
    "kv_item_len": 6144,
    "num_kv_regions": 60,
}


def test_bootstrap_server_routes() -> None:
    port = free_port()
    server = BootstrapServer("127.0.0.1", port)
    addr = f"127.0.0.1:{port}"
    try:
        instance = check_health(addr)
        assert instance == server.instance
        with pytest.raises(PrefillUnavailable, match="503"):
            fetch_prefill_info(addr)
        register_prefill(addr, INFO, server.secret)
        got = fetch_prefill_info(addr)
        assert got["rank_port"] == 5555 and got["bootstrap_instance"] == instance
        with urllib.request.urlopen(f"http://{addr}/health") as r:
            assert r.read() == b"OK"
        bad = urllib.request.Request(f"http://{addr}/route", data=b"{}", method="PUT",
                                     headers={"X-Bootstrap-Secret": server.secret})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad)
        assert e.value.code == 400
    finally:
        server.close()
    assert check_health(addr, timeout=0.5) is None


def test_bootstrap_port_in_use_names_the_port_and_the_flag() -> None:
    port = free_port()
    server = BootstrapServer("127.0.0.1", port)
    try:
        with pytest.raises(RuntimeError) as e:
            BootstrapServer("127.0.0.1", port)
        assert f"port {port} is already in use" in str(e.value)
        assert "--disaggregation-bootstrap-port" in str(e.value)
    finally:
        server.close()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"page_size": 1}, "page size differs: prefill 16, decode 1; start both with the same "
                           "--page-size"),
        ({"kv_dtype": "torch.float32"}, "KV cache dtype differs: prefill torch.bfloat16, decode "
                                        "torch.float32"),
        ({"backend": "nixl"}, "transfer backend differs: prefill mooncake, decode nixl"),
        ({"model_shape": {"num_layers": 28, "num_kv_heads": 3, "head_dim": 64}},
         "model shape differs (num_layers): prefill 30, decode 28"),
        ({"model_shape": {"num_layers": 30, "num_kv_heads": 3, "head_dim": 128}},
         "model shape differs (head_dim): prefill 64, decode 128"),
    ],
)
def test_handshake_mismatch_messages(change: dict, expected: str) -> None:
    assert compat_problem(INFO, dict(INFO)) is None
    problem = compat_problem(INFO, {**INFO, **change})
    assert problem is not None and expected in problem


def test_control_messages_round_trip() -> None:
    pages = np.array([3, 4, 9], dtype=np.int32)
    msg = messages.MetadataMsg("127.0.0.1:1", (1 << 64) - 1, pages.tobytes(), 7)
    back = messages.decode(messages.encode(msg))
    assert back == msg and back.pages().tolist() == [3, 4, 9]
    reg = messages.RegisterMsg("h:1", 0, [1, 2], 64, [3], [64], {"agent_metadata": b"\x00\xff"})
    assert messages.decode(messages.encode(reg)) == reg
    with pytest.raises(ValueError):
        messages.decode(json.dumps({"t": "nope"}).encode())


def test_fake_sender_and_receiver_life_cycle() -> None:
    mgr = FakeKVManager(None, "decode")  # type: ignore[arg-type]
    r = create_kv_receiver(mgr, "mooncake", FAKE_BOOTSTRAP_HOST, 8998, 1)
    assert type(r).__name__ == "FakeKVReceiver"
    assert r.poll() == KVPoll.WaitingForInput
    r.send_metadata(np.array([1], np.int32), 0)
    assert r.poll() == KVPoll.Success

    s = create_kv_sender(mgr, "nixl", FAKE_BOOTSTRAP_HOST, 8998, 2)
    assert type(s).__name__ == "FakeKVSender"
    s.init(2, 0)
    s.send(np.array([0], np.int32), False)
    assert s.poll() == KVPoll.WaitingForInput
    s.send(np.array([1], np.int32), True)
    assert s.poll() == KVPoll.Success

    conns = (create_kv_sender(mgr, "fake", "h", 1, 3), create_kv_receiver(mgr, "fake", "h", 1, 4))
    for conn in conns:
        conn.abort()
        assert conn.poll() == KVPoll.Failed
        assert "Aborted by AbortReq." in str(conn.failure_exception())


def test_factory() -> None:
    assert get_kv_class("mooncake", "manager").__name__ == "MooncakeKVManager"
    assert get_kv_class("nixl", "receiver").__name__ == "NixlKVReceiver"
    assert get_kv_class("fake", "sender").__name__ == "FakeKVSender"
    assert get_kv_class("fake", "bootstrap_server") is None
    assert get_kv_class("nixl", "bootstrap_server") is not None
    with pytest.raises(ValueError):
        get_kv_class("ascend", "manager")
