"""Pure logic behind the copied SGLang flags: lpm's waiting-queue order, the queue limit,
stream pacing, the refused-flag list, and mooncake_tcp's transport choice."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from sglang.srt.managers.admission import (
    LPM_MAX_QUEUE,
    order_longest_prefix_first,
    queue_full_message,
    stream_due,
)
from sglang.srt.unsupported_flags import UNSUPPORTED_FLAGS, refused_flag


def _req(rid, prefix, under_way=False):
    return SimpleNamespace(rid=rid, prefix=prefix, req_pool_idx=0 if under_way else None,
                           pages=[])


def test_lpm_orders_longest_cached_prefix_first_ties_fcfs_under_way_in_front():
    q = [_req("a", 0), _req("b", 32), _req("c", 8), _req("chunked", 0, under_way=True),
         _req("d", 32), _req("e", 8)]
    order_longest_prefix_first(q, lambda r: r.prefix)
    assert [r.rid for r in q] == ["chunked", "b", "d", "c", "e", "a"]


def test_lpm_keeps_fcfs_beyond_the_queue_cap():
    q = [_req(str(i), i) for i in range(LPM_MAX_QUEUE + 1)]
    order_longest_prefix_first(q, lambda r: r.prefix)
    assert [r.rid for r in q] == [str(i) for i in range(LPM_MAX_QUEUE + 1)]


def test_queue_limit():
    assert queue_full_message(0, None) is None and queue_full_message(99, None) is None
    assert queue_full_message(1, 2) is None
    msg = queue_full_message(2, 2)
    assert "--max-queued-requests 2" in msg and "2 requests are waiting" in msg


def test_stream_due_first_token_then_every_n_and_the_last():
    def due(n_out, sent, finished=False, n=3):
        return stream_due(SimpleNamespace(output_ids=[0] * n_out, sent_len=sent,
                                          finished=finished), n)

    assert due(1, 0)                      # the first token at once
    assert not due(2, 1) and not due(3, 1) and due(4, 1)
    assert due(5, 4, finished=True)       # the last always
    assert due(2, 1, n=1)


def test_refused_flags():
    assert refused_flag(["--model-path", "m", "--port", "1"]) is None
    msg = refused_flag(["--model-path", "m", "--speculative-algorithm=EAGLE"])
    assert msg.startswith("--speculative-algorithm is an SGLang flag") and "drop" in msg
    assert refused_flag(["--no-such-flag"]) is None  # argparse's own error then
    for implemented in ("--mem-fraction-static", "--tp-size", "--api-key", "--chat-template",
                        "--schedule-policy", "--max-queued-requests", "--stream-interval",
                        "--nnodes", "--node-rank", "--dist-init-addr"):
        assert implemented not in UNSUPPORTED_FLAGS


@pytest.mark.parametrize("kw,needle", [
    ({"dp_size": 2, "tp_size": 2, "nnodes": 2, "dist_init_addr": "h:1"},
     "data parallelism runs on one node here"),
    ({"tp_size": 3, "nnodes": 2, "dist_init_addr": "h:1"}, "multiple of --nnodes 2"),
    ({"tp_size": 2, "nnodes": 2}, "needs --dist-init-addr HOST:PORT"),
    ({"tp_size": 2, "nnodes": 2, "node_rank": 2, "dist_init_addr": "h:1"}, "--node-rank must"),
    ({"tp_size": 2, "dist_init_addr": "no-port"}, "--dist-init-addr must be HOST:PORT"),
])
def test_tp_and_node_flags_are_checked(kw, needle):
    from sglang.srt.server_args import ServerArgs

    with pytest.raises(ValueError, match=re.escape(needle)):
        ServerArgs(model_path="m", **kw)
    assert ServerArgs(model_path="m", tp_size=2, nnodes=2, node_rank=1,
                      dist_init_addr="127.0.0.2:5000").tp_size == 2
    # PD servers take --tp-size too (refused until PD across TP ranks existed)
    assert ServerArgs(model_path="m", tp_size=2, disaggregation_mode="decode").tp_size == 2


def test_mooncake_tcp_forces_tcp_even_with_an_rdma_device():
    from sglang.srt.disaggregation.mooncake.transfer_engine import pick_protocol
    from sglang.srt.disaggregation.utils import get_kv_class

    assert pick_protocol("mlx5_0")[0] == "rdma"
    proto, device, why = pick_protocol("mlx5_0", force_tcp=True)
    assert (proto, device) == ("tcp", "") and "mooncake_tcp" in why
    tcp_mgr = get_kv_class("mooncake_tcp", "manager")
    assert tcp_mgr.force_tcp and not get_kv_class("mooncake", "manager").force_tcp
    assert tcp_mgr.backend_name == "mooncake"  # peers on plain mooncake (TCP) still match
    assert get_kv_class("mooncake_tcp", "sender") is get_kv_class("mooncake", "sender")
