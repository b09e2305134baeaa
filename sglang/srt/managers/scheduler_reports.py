"""What the scheduler reports: its start-up facts, /get_server_info's internal state, the
gauges of a metrics snapshot, and the answers to RPCs from the HTTP process."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sglang.srt.distributed import gather_objects
from sglang.srt.managers.io_struct import RpcOut, RpcReq

if TYPE_CHECKING:
    from sglang.srt.managers.scheduler import Scheduler


class SchedulerReportsMixin:
    def ready_info(self: "Scheduler") -> dict[str, Any]:
        mc = self.model_config
        info = {
            "context_length": self.context_len,
            "max_total_num_tokens": self.pool.size,
            "max_running_requests": self.max_running,
            "page_size": self.args.page_size,
            "device": self.device,
            "dtype": str(mc.torch_dtype),
            "kv_bytes_per_token": self.pool.layout.bytes_per_token,
            "kv_cache_storage_dtype": self.pool.dtype_name,
            "eos_token_ids": sorted(mc.eos_token_ids),
            "vocab_size": mc.vocab_size,
            "architecture": mc.architecture,
            "cpu_kernels": self.runner.attn_backend.kernel is not None,
        }
        if self.pd:
            info["disaggregation"] = self.disagg.describe()
        return info

    def rpc(self: "Scheduler", msg: RpcReq) -> RpcOut:
        if msg.method == "get_info":
            return RpcOut(msg.rpc_id, self.info())
        if msg.method == "flush_cache":
            ok = not self.busy() and self.cache.flush()
            return RpcOut(msg.rpc_id, ok)
        return RpcOut(msg.rpc_id, error=f"unknown method {msg.method}")

    def info(self: "Scheduler") -> dict[str, Any]:
        d = {
            "dp_rank": self.dp_rank,
            "num_received_reqs": self.num_received_reqs,  # requests this replica was sent
            "kv_pool": self.cache.stats(),
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "forward_ct": self.forward_ct,
        }
        if self.pd:
            d["disaggregation"] = self.disagg.info()
        if self.args.tp_size > 1:  # every rank runs this RPC (rank 0 broadcast it): gather
            ranks = gather_objects({k: v for k, v in d.items() if k != "dp_rank"})
            d["tp_ranks"] = [dict(r, tp_rank=i) for i, r in enumerate(ranks) if i > 0]
        return d

    def gauges(self: "Scheduler") -> dict[str, int]:
        """What the metrics snapshot reads: sizes of the queues and of the pool."""
        return {"running": len(self.running), "waiting": len(self.waiting),
                "total_pages": self.cache.num_pages, "available_pages": self.cache.available_pages,
                "page_size": self.cache.page_size, **self.disagg.queue_sizes()}
