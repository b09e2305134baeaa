"""What the prefill and decode queues share: the KV manager, metadata rows, transfer totals."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sglang.srt.disaggregation.base.conn import ABORTED, KVArgs, KVPoll
from sglang.srt.disaggregation.common.metadata_buffers import (
    MetadataBuffers,
    MetadataSlotAllocator,
)
from sglang.srt.disaggregation.utils import get_kv_class

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.managers.scheduler import Scheduler

logger = logging.getLogger(__name__)


class DisaggQueuesBase:
    mode = ""

    def __init__(self, sched: "Scheduler"):
        self.sched = sched
        args = sched.args
        self.backend = args.disaggregation_transfer_backend
        n_slots = 2 * sched.max_running + 8
        self.metadata = MetadataBuffers(n_slots)
        self.slots = MetadataSlotAllocator(n_slots)
        self.num_slots = n_slots
        aux_ptrs, aux_lens, aux_item_lens = self.metadata.ptrs_lens_item_lens()
        pool = sched.pool
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "localhost") else args.host
        kv_args = KVArgs(
            engine_rank=0,
            kv_data_ptrs=pool.data_ptrs(),
            kv_data_lens=pool.data_lens(),
            kv_item_len=pool.item_len,
            aux_data_ptrs=aux_ptrs,
            aux_data_lens=aux_lens,
            aux_item_lens=aux_item_lens,
            page_size=pool.page_size,
            kv_dtype=pool.dtype_name,  # --kv-cache-dtype's spelling: fp8_e4m3, bfloat16
            model_shape={
                "num_layers": pool.layout.num_layers,
                "num_kv_heads": pool.layout.num_kv_heads,
                "head_dim": pool.layout.head_dim,
            },
            device=sched.device,
            # the device the pages live on (not --base-gpu-id: on a CPU it means nothing)
            gpu_id=pool.buffer.device.index or 0 if pool.buffer.is_cuda else 0,
            ib_device=args.disaggregation_ib_device,
            local_host=host,
            bootstrap_port=args.disaggregation_bootstrap_port,
        )
        self.mgr = get_kv_class(self.backend, "manager")(kv_args, self.mode)
        self.totals = {"transfers": 0, "failed": 0, "bytes": 0, "seconds": 0.0, "blocks": 0}
        self.last_transfer: dict[str, Any] = {}
        logger.info("PD %s: %s", self.mode, self.describe())

    def release(self, req: "Req") -> None:
        """Called when the scheduler finishes ``req`` (also on aborts): forget its room and
        give back its metadata slot."""
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
        self.sched.metrics.on_failure(what)

    def describe(self) -> dict[str, Any]:
        d = {"mode": self.mode, "backend": self.backend}
        d.update(self.mgr.describe())
        return d

    def shutdown(self) -> None:
        self.mgr.shutdown()

    def transfer_info(self) -> dict[str, Any]:
        t = dict(self.totals)
        t["gb_per_s"] = t["bytes"] / t["seconds"] / 1e9 if t["seconds"] > 0 else 0.0
        t["last"] = self.last_transfer
        return t
