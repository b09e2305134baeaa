"""A prefill that dies, on Mooncake and NIXL: the decode's heartbeat fails its receivers and
drops the connection, and a prefill restarted on the same bootstrap port is usable again (also
when it restarted so fast that no heartbeat was missed)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from transfer_procs import LAYOUT, new_proc, pd_pair

from sglang.srt.disaggregation.base.conn import KVPoll

BACKENDS = ["mooncake", "nixl"]
DONE = [int(KVPoll.Success), int(KVPoll.Failed)]
READY = [int(KVPoll.WaitingForInput), int(KVPoll.Failed)]
FAST_HEARTBEAT = {
    "SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "0.3",
    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "2",
}


def _room() -> int:
    return random.getrandbits(63) | 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_dead_prefill_fails_the_receiver_and_a_restarted_one_works(backend: str) -> None:
    with pd_pair(backend, decode_kw={"env": FAST_HEARTBEAT}) as (p, d, addr):
        room = _room()
        d.call("open", room, addr)
        p.call("open", room, addr)
        assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
        d.call("send_metadata", room, [1, 2], 0)
        p.kill()
        status, reason = d.call("wait", room, DONE, timeout=20)
        assert status == KVPoll.Failed
        assert f"Lost connection with prefill instance (bootstrap_addr: {addr})" in reason

        # a new prefill on the same bootstrap port: the decode handshakes and registers again
        port = int(addr.rsplit(":", 1)[1])
        p2 = new_proc(backend, "prefill", port)
        try:
            p2.call("fill_random", 99)
            room2 = _room()
            d.call("open", room2, addr)
            p2.call("open", room2, addr)
            assert d.call("wait", room2, READY)[0] == KVPoll.WaitingForInput
            d.call("send_metadata", room2, [9, 10], 2)
            assert p2.call("wait", room2, READY)[0] == KVPoll.WaitingForInput
            p2.call("init", room2, 2, 1)
            p2.call("set_aux", 1, room2, 17, 0, None, [])
            p2.call("send", room2, [3, 4], True)
            assert p2.call("wait", room2, DONE) == (KVPoll.Success, "")
            assert d.call("wait", room2, DONE) == (KVPoll.Success, "")
            src = np.frombuffer(p2.call("pool_bytes"), np.uint8)
            dst = np.frombuffer(d.call("pool_bytes"), np.uint8)
            src = src.reshape(2, LAYOUT["num_layers"], 64, -1)
            dst = dst.reshape(2, LAYOUT["num_layers"], 64, -1)
            assert (dst[:, :, 9:11] == src[:, :, 3:5]).all()
            assert d.call("get_aux", 2)["room"] == room2
        finally:
            p2.close()


def test_quickly_restarted_prefill_is_noticed_without_missed_heartbeats() -> None:
    """Misses alone would never declare this prefill dead here; its new instance id does."""
    env = {**FAST_HEARTBEAT, "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "1000"}
    with pd_pair("mooncake", decode_kw={"env": env}) as (p, d, addr):
        room = _room()
        d.call("open", room, addr)
        assert d.call("wait", room, READY)[0] == KVPoll.WaitingForInput
        d.call("send_metadata", room, [1, 2], 0)
        p.kill()
        p2 = new_proc("mooncake", "prefill", int(addr.rsplit(":", 1)[1]))
        try:
            status, reason = d.call("wait", room, DONE, timeout=20)
            assert status == KVPoll.Failed and "it restarted" in reason
            room2 = _room()
            d.call("open", room2, addr)
            p2.call("open", room2, addr)
            assert d.call("wait", room2, READY)[0] == KVPoll.WaitingForInput
            d.call("send_metadata", room2, [3], 1)
            assert p2.call("wait", room2, READY)[0] == KVPoll.WaitingForInput
            p2.call("init", room2, 1, 0)
            p2.call("send", room2, [0], True)
            assert p2.call("wait", room2, DONE) == (KVPoll.Success, "")
            assert d.call("wait", room2, DONE) == (KVPoll.Success, "")
        finally:
            p2.close()
