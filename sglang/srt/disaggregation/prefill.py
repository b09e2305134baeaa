"""Prefill-mode queues.

A request arrives with its bootstrap fields and waits in the bootstrap queue until its decode
server has sent page indices and a metadata slot; ``poll`` then admits it to the scheduler,
which runs it as any prompt (chunked prefill, prefix cache). After every chunk
(``after_prefill``) its whole computed pages are handed to the sender; after the last chunk the
metadata row (first token, logprobs, room) follows and the request waits in the inflight queue
until the transfer is done; ``poll`` then ends it, and the scheduler releases its KV (its whole
pages stay in the prefix cache) and answers it (first token, input logprobs).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from sglang.srt.base_types import KVPoll
from sglang.srt.disaggregation.queues_common import (
    Connect,
    DisaggQueuesBase,
    agree,
    local_fail,
)
from sglang.srt.managers.disagg_protocol import Admissions, Load, PDContext

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.managers.schedule_policy import ScheduledBatch

logger = logging.getLogger(__name__)


class PrefillQueues(DisaggQueuesBase):
    mode = "prefill"

    def __init__(self, ctx: PDContext, connect: Optional[Connect] = None):
        super().__init__(ctx, connect)
        self.bootstrap: list[Req] = []
        self.inflight: list[Req] = []

    def add(self, req: "Req") -> None:
        req.max_new_tokens = min(req.max_new_tokens, 1)
        req.disagg = self.conn.sender(req.bootstrap_host, req.bootstrap_port, req.bootstrap_room)
        self.bootstrap.append(req)
        logger.debug("room=%s rid=%s: bootstrap queue", req.bootstrap_room, req.rid)

    def busy(self) -> bool:
        return bool(self.bootstrap or self.inflight)

    def poll(self, load: Load) -> Admissions:
        adm = Admissions()
        ps = self.kv.page_size
        # every TP rank admits and ends the same requests in the same step
        states = agree([int(r.disagg.poll()) for r in self.bootstrap + self.inflight])
        nb = len(self.bootstrap)
        boot, infl = states[:nb], states[nb:]
        for req, state in zip(list(self.bootstrap), boot):
            if state == KVPoll.Bootstrapping:
                continue
            if state == KVPoll.Failed:
                self.bootstrap.remove(req)
                local_fail(req)
                self.fail(req, "Prefill bootstrap failed")
                adm.ended.append(req)
                continue
            slot = self.slots.alloc()
            if slot is None:
                break
            req.metadata_index = slot
            req.disagg.init(-(-len(req.origin_input_ids) // ps), slot)
            self.bootstrap.remove(req)
            self.stats.on_bootstrapped(req)
            adm.admitted.append(req)
        for req, state in zip(list(self.inflight), infl):
            if state == KVPoll.Success:
                self.record(req.disagg.get_transfer_metric(), req)
            elif state == KVPoll.Failed:
                local_fail(req)
                self.fail(req, "Prefill transfer failed")
            else:
                continue
            self.inflight.remove(req)
            adm.ended.append(req)
        return adm

    def after_prefill(self, batch: "ScheduledBatch") -> list["Req"]:
        """Hand each request's newly computed whole pages to its sender; after the last chunk
        also its metadata row. Returns the requests now held by their transfer."""
        ps = self.kv.page_size
        held = []
        for req in batch.reqs:
            if req.disagg is None or req.finished and req.finished_reason["type"] == "abort":
                continue
            last = req.kv_len >= len(req.origin_input_ids)
            end = -(-req.kv_len // ps) if last else req.kv_len // ps
            if last:
                lp, top = (req.pending_logprobs[0] if req.pending_logprobs else (None, 0)), []
                if req.pending_top:
                    top = req.pending_top[0]
                self.metadata.set_buf(
                    req.metadata_index, req.bootstrap_room,
                    first_token=req.output_ids[0] if req.output_ids else 0,
                    cached_tokens=req.cached_tokens, logprob=lp[0], top_logprobs=top,
                )
            if end > req.sent_pages or last:
                pages = np.asarray(req.pages[req.sent_pages : end], dtype=np.int32)
                req.disagg.send(pages, last)
                req.sent_pages = end
            if last:
                self.inflight.append(req)
                held.append(req)
                logger.debug("room=%s rid=%s: inflight", req.bootstrap_room, req.rid)
        return held

    def abort(self, rid: str) -> list["Req"]:
        ended = [r for r in self.bootstrap if rid in ("", r.rid)]
        self.bootstrap = [r for r in self.bootstrap if r not in ended]
        for req in self.inflight:
            if rid in ("", req.rid):
                req.disagg.abort()  # the next poll fails it and ends it
        return ended

    def record(self, metric: dict[str, Any], req: "Req") -> None:
        req.transfer = metric
        self.last_transfer = metric
        self.stats.on_transfer(metric)
        self.totals["transfers"] += 1
        for k in ("bytes", "seconds", "blocks"):
            self.totals[k] += metric.get(k, 0) or 0

    def queue_sizes(self) -> dict[str, int]:
        return {"num_prefill_bootstrap_queue_reqs": len(self.bootstrap),
                "num_prefill_inflight_queue_reqs": len(self.inflight)}

    def info(self) -> dict[str, Any]:
        return {
            "bootstrap_queue": len(self.bootstrap),
            "inflight_queue": len(self.inflight),
            "metadata_slots_free": self.slots.available(),
            "metadata_slots": self.num_slots,
            "transfer": self.transfer_info(),
            **self.describe(),
        }
