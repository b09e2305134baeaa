"""What the prefill and decode queues share: the connector to the transfer backend, the
metadata rows and their slots, failure and transfer accounting.

The queues implement ``managers.disagg_protocol.DisaggLayer``: they never touch the scheduler;
they see the KV cache through the ``KVPort`` of their ``PDContext``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Optional

from sglang.srt.base_types import ABORTED, KVPoll
from sglang.srt.disaggregation.base.conn import BaseKVManager, KVArgs
from sglang.srt.disaggregation.common.metadata_buffers import (
    MetadataBuffers,
    MetadataSlotAllocator,
)
from sglang.srt.disaggregation.utils import FAKE_BOOTSTRAP_HOST, get_kv_class
from sglang.srt.distributed import broadcast_objects, get_tp_rank, get_tp_size, tp_min_ints
from sglang.srt.managers.disagg_protocol import PDContext
from sglang.srt.utils.network import advertised_host, host_port

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req

logger = logging.getLogger(__name__)


class BackendConnector:
    """The data plane of one transfer backend, used by composition: its manager (engine,
    registered memory, control threads) and a sender or receiver per request (the fake ones for
    FAKE_BOOTSTRAP_HOST, as SGLang's)."""

    def __init__(self, backend: str, kv_args: KVArgs, mode: str):
        self.backend = backend
        self.mgr: BaseKVManager = get_kv_class(backend, "manager")(kv_args, mode)
        self._classes = {kind: (get_kv_class(backend, kind), get_kv_class("fake", kind))
                         for kind in ("sender", "receiver")}

    def _make(self, kind: str, host: Optional[str], port: Optional[int], room: int) -> Any:
        real, fake = self._classes[kind]
        cls = fake if host == FAKE_BOOTSTRAP_HOST else real
        return cls(self.mgr, host_port(host, port), room)

    def sender(self, host: Optional[str], port: Optional[int], room: int) -> Any:
        return self._make("sender", host, port, room)

    def receiver(self, host: Optional[str], port: Optional[int], room: int) -> Any:
        return self._make("receiver", host, port, room)

    def describe(self) -> dict[str, Any]:
        return self.mgr.describe()

    def shutdown(self) -> None:
        self.mgr.shutdown()


Connect = Callable[[str, KVArgs, str], Any]  # (backend, kv_args, mode) -> connector


def kv_args_of(ctx: PDContext, aux: tuple[list[int], list[int], list[int]]) -> KVArgs:
    args, pool = ctx.args, ctx.pool
    aux_ptrs, aux_lens, aux_item_lens = aux
    return KVArgs(
        engine_rank=ctx.tp_rank,
        tp_size=ctx.tp_size,
        num_heads=ctx.num_heads,
        kv_data_ptrs=pool.data_ptrs(),
        kv_buffer=pool.buffer,
        kv_data_lens=pool.data_lens(),
        kv_item_len=pool.item_len,
        aux_data_ptrs=aux_ptrs,
        aux_data_lens=aux_lens,
        aux_item_lens=aux_item_lens,
        page_size=pool.page_size,
        kv_dtype=pool.dtype_name,  # --kv-cache-dtype's spelling: fp8_e4m3, bfloat16
        model_shape={
            "num_layers": pool.layout.num_layers,
            # the model's, not this rank's share (tp_layout.py)
            "num_kv_heads": ctx.num_kv_heads or pool.layout.num_kv_heads,
            "head_dim": pool.layout.head_dim,
        },
        device=ctx.device,
        # the device the pages live on (not --base-gpu-id: on a CPU it means nothing)
        gpu_id=pool.buffer.device.index or 0 if pool.buffer.is_cuda else 0,
        ib_device=args.disaggregation_ib_device,
        # the address peers on other hosts are told (registration, control endpoint, engine
        # session): --host itself, or this machine's routable IP when --host is a wildcard
        local_host=advertised_host(args.host),
        bootstrap_port=args.disaggregation_bootstrap_port,
        # the bootstrap server and the control socket listen where --host says (0.0.0.0:
        # every interface); with --dp-size, replica 0 runs the bootstrap server and every
        # replica registers under its dp_rank
        extra={"bootstrap_host": args.host, "dp_rank": ctx.dp_rank, "dp_size": args.dp_size,
               "start_bootstrap_server": ctx.dp_rank == 0},
    )


def connect_ranks(connect: Connect, backend: str, kv_args: KVArgs, mode: str) -> Any:
    """Every TP rank gets its own manager (engine_rank = its rank). Prefill: rank 0 runs the
    bootstrap server, then gives its secret to the other ranks, which register with it."""
    if mode != "prefill" or get_tp_size() == 1:
        return connect(backend, kv_args, mode)
    conn = None
    if get_tp_rank() == 0:
        conn = connect(backend, kv_args, mode)
        server = getattr(conn.mgr, "bootstrap_server", None)
        secret = [server.secret if server is not None else ""]
    else:
        secret = None
    secret = broadcast_objects(secret)  # every rank calls it here, once
    if conn is None:
        kv_args.extra.update(start_bootstrap_server=False, bootstrap_secret=secret[0] or None)
        conn = connect(backend, kv_args, mode)
    return conn


def agree(states: list[int]) -> list[int]:
    """Each KVPoll value as every TP rank may act on it: the lowest over the ranks (any Failed
    -> Failed, Success only when all are). One all-reduce per call; none at tp=1."""
    return tp_min_ints(states) if states and get_tp_size() > 1 else states


def local_fail(req: "Req") -> None:
    """Another rank failed the request: fail this rank's room too (its peers are told)."""
    if req.disagg is not None and req.disagg.poll() != KVPoll.Failed:
        req.disagg.abort()


class DisaggQueuesBase:
    mode = ""

    def __init__(self, ctx: PDContext, connect: Optional[Connect] = None):
        self.ctx = ctx
        self.kv = ctx.kv
        self.stats = ctx.stats
        self.backend = ctx.args.disaggregation_transfer_backend
        n_slots = 2 * ctx.max_running + 8
        self.metadata = MetadataBuffers(n_slots)
        self.slots = MetadataSlotAllocator(n_slots)
        self.num_slots = n_slots
        kv_args = kv_args_of(ctx, self.metadata.ptrs_lens_item_lens())
        self.conn = connect_ranks(connect or BackendConnector, self.backend, kv_args, self.mode)
        self.totals = {"transfers": 0, "failed": 0, "bytes": 0, "seconds": 0.0, "blocks": 0}
        self.last_transfer: dict[str, Any] = {}
        logger.info("PD %s: %s", self.mode, self.describe())

    def release(self, req: "Req") -> None:
        """The scheduler finished ``req`` (also on aborts): forget its room and give back its
        metadata slot."""
        if req.disagg is not None:
            if req.disagg.poll() not in (KVPoll.Success, KVPoll.Failed):
                req.disagg.abort()
            req.disagg.clear()
            req.disagg = None
        if req.metadata_index is not None:
            self.metadata.reset(req.metadata_index)
            self.slots.free(req.metadata_index)
            req.metadata_index = None

    def fail(self, req: "Req", what: str, status: int = 500) -> None:
        exc = req.disagg.failure_exception() if req.disagg is not None else None
        if ABORTED in str(getattr(exc, "reason", "")):
            status = 499  # an abort ends as 499 on either side, as a decode's or a queued one
        msg = (f"{what} for request rid={req.rid} bootstrap_room={req.bootstrap_room} "
               f"with exception {exc}")
        logger.warning(msg)
        req.finished_reason = None
        req.abort(msg, status)
        self.totals["failed"] += 1
        self.stats.on_failure(what)

    def describe(self) -> dict[str, Any]:
        d = {"mode": self.mode, "backend": self.backend}
        d.update(self.conn.describe())
        return d

    def shutdown(self) -> None:
        self.conn.shutdown()

    def transfer_info(self) -> dict[str, Any]:
        t = dict(self.totals)
        t["gb_per_s"] = t["bytes"] / t["seconds"] / 1e9 if t["seconds"] > 0 else 0.0
        t["last"] = self.last_transfer
        return t
