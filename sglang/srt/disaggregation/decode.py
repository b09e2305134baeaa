"""Decode-mode queues.

A request arrives with its bootstrap fields; its receiver handshakes with the prefill's
bootstrap server (prealloc queue). Once connected, and once this server has pages, a request-
table row and a metadata slot for it, the pages are allocated and their indices sent to the
prefill (transfer queue). When the prefill reports the last chunk and the metadata row written,
the row's room is checked, the first output token appended, and the request joins the running
batch without any prefill forward pass. Every failure frees what the request held.

A request given up on after its pages went to the prefill (client abort or disconnect, waiting
timeout, transfer failure, lost prefill) ends at once for the client, but its pages and metadata
row are held back from the free lists until the prefill acknowledges that it will not write into
them, or SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_TIMEOUT passes: a late write must not
land in pages another request already got. /get_server_info shows them as ``held_reqs`` and
``held_pages``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from sglang.srt.base_types import ABORTED, KVPoll
from sglang.srt.disaggregation.base.conn import BaseKVReceiver
from sglang.srt.disaggregation.queues_common import (
    Connect,
    DisaggQueuesBase,
    agree,
    local_fail,
)
from sglang.srt.distributed import get_tp_rank, get_tp_size
from sglang.srt.env import envs
from sglang.srt.managers.disagg_protocol import Admissions, Decoded, Load, PDContext

if TYPE_CHECKING:
    from sglang.srt.managers.req import Req
    from sglang.srt.managers.schedule_policy import ScheduledBatch

logger = logging.getLogger(__name__)


@dataclass
class HeldPages:
    """What an abandoned request leaves until its prefill can no longer write into it."""

    room: int
    receiver: BaseKVReceiver
    pages: list[int]
    slot: Optional[int]
    since: float


class DecodeQueues(DisaggQueuesBase):
    mode = "decode"

    def __init__(self, ctx: PDContext, connect: Optional[Connect] = None):
        super().__init__(ctx, connect)
        self.prealloc: list[Req] = []
        self.transfer: list[Req] = []
        self.iteration = 0
        self.held: list[HeldPages] = []
        self.released = {"ack": 0, "timeout": 0}

    def add(self, req: "Req") -> None:
        # The prompt's logits are on the prefill server: with return_logprob the decode answers
        # input_token_logprobs / input_top_logprobs as empty lists, as SGLang's decode does,
        # and the balancer (mini_lb, sglang-router) prepends the prefill's values
        # (sglang-router merges only into a key the decode's response already has).
        req.disagg = self.conn.receiver(req.bootstrap_host, req.bootstrap_port,
                                        req.bootstrap_room)
        self.prealloc.append(req)
        logger.debug("room=%s rid=%s: prealloc queue", req.bootstrap_room, req.rid)

    def busy(self) -> bool:
        return bool(self.prealloc or self.transfer)

    def poll(self, load: Load) -> Admissions:
        adm = Admissions()
        self.iteration += 1
        if self.held:
            self._release_held()
        if self.iteration % max(1, self.ctx.args.disaggregation_decode_polling_interval) == 0:
            self._pop_preallocated(load, adm)
        self._pop_transferred(adm)
        return adm

    def _can_admit(self, req: "Req", load: Load) -> bool:
        if load.running + len(self.transfer) >= load.max_running:
            return False
        if load.waiting:  # retracted requests resume first
            return False
        reserve = min(req.max_new_tokens, self.ctx.args.num_reserved_decode_tokens)
        need = self.kv.pages_for(len(req.origin_input_ids) + reserve)
        # keep one page of headroom for each request already decoding or arriving
        return need + load.running + len(self.transfer) <= self.kv.available_pages

    def _pop_preallocated(self, load: Load, adm: Admissions) -> None:
        states = agree([int(r.disagg.poll()) for r in self.prealloc])
        for req, state in zip(list(self.prealloc), states):
            if state == KVPoll.Bootstrapping:
                continue
            if state == KVPoll.Failed:
                self.prealloc.remove(req)
                local_fail(req)
                self.fail(req, "Decode handshake failed")
                adm.ended.append(req)
                continue
            if not self._can_admit(req, load):
                break
            slot = self.slots.alloc()
            if slot is None:
                break
            if not self.kv.grow(req, len(req.origin_input_ids)):
                self.slots.free(slot)
                break
            req.metadata_index = slot
            req.disagg.send_metadata(np.asarray(req.pages, dtype=np.int32), slot)
            self.prealloc.remove(req)
            self.transfer.append(req)
            logger.debug("room=%s rid=%s: %d pages sent", req.bootstrap_room, req.rid,
                         len(req.pages))

    def _pop_transferred(self, adm: Admissions) -> None:
        states = agree([int(r.disagg.poll()) for r in self.transfer])
        arrived = []
        for req, state in zip(list(self.transfer), states):
            if state == KVPoll.Failed:
                self.transfer.remove(req)
                local_fail(req)
                self.fail(req, "Decode transfer failed")
                self._hold(req)
                adm.ended.append(req)
            elif state == KVPoll.Success:
                self.transfer.remove(req)
                arrived.append((req, self._row(req)))
        # each rank reads its own metadata row: the ranks act on it only if every rank's
        # row names the request's room (1), so that no rank decodes what another dropped
        intact = agree([int(not req.disagg.moves_data  # (fake backend: nothing written)
                            or row["room"] == (req.bootstrap_room or 0) % (1 << 64))
                        for req, row in arrived])
        for (req, row), ok in zip(arrived, intact):
            if not ok:
                req.abort(f"Metadata corruption detected - bootstrap_room mismatch "
                          f"(expected {req.bootstrap_room}, got {row['room']} on this rank or "
                          f"another TP rank)")
                adm.ended.append(req)
                continue
            self.release(req)
            adm.decoded.append(Decoded(req, row["first_token"], row["cached_tokens"],
                                       row["logprob"], row["top_logprobs"]))

    def _row(self, req: "Req") -> dict[str, Any]:
        row = self.metadata.get_buf(req.metadata_index)
        prefix, rank = envs.test_corrupt_metadata
        if prefix and rank == get_tp_rank() and req.rid.startswith(prefix):
            row = {**row, "room": row["room"] ^ 1}  # test only: a corrupted row
        return row

    def after_prefill(self, batch: "ScheduledBatch") -> list["Req"]:
        return []  # a decode server runs no prompt passes for PD requests

    def abort(self, rid: str) -> list["Req"]:
        ended = []
        for queue in (self.prealloc, self.transfer):
            for req in list(queue):
                if rid in ("", req.rid):
                    queue.remove(req)
                    req.disagg.abort()
                    req.abort(ABORTED, 499)
                    if queue is self.transfer:
                        self._hold(req)
                    ended.append(req)
        return ended

    # ---- deferred release -----------------------------------------------------------------
    def _hold(self, req: "Req") -> None:
        """Take the pages and metadata row of a request given up on in the transfer queue away
        from it, unless the prefill can no longer write into them; ``finish`` then frees the
        rest (its request-table row) at once."""
        receiver = req.disagg
        if receiver is None or not envs.deferred_decode_kv_release:
            return
        if get_tp_size() == 1 and receiver.writes_drained():
            return  # (tp > 1: held, and released by the ranks' agreement on the next poll)
        own = req.pages[req.prefix_pages:]
        req.pages = req.pages[: req.prefix_pages]
        self.held.append(HeldPages(req.bootstrap_room, receiver, own, req.metadata_index,
                                   time.monotonic()))
        req.disagg, req.metadata_index = None, None
        logger.debug("room=%s rid=%s: %d pages held until the prefill acknowledges",
                     req.bootstrap_room, req.rid, len(own))

    def _release_held(self) -> None:
        timeout = envs.deferred_decode_kv_release_timeout
        now = time.monotonic()
        # 2: drained, 1: timed out, 0: neither; the lowest over the TP ranks
        ready = agree([2 if h.receiver.writes_drained() else int(now - h.since > timeout)
                       for h in self.held])
        for h, r in zip(list(self.held), ready):
            if r == 2:
                how = "ack"
            elif r == 1:
                how = "timeout"
                logger.warning(
                    "room=%s: no abort acknowledgement from the prefill after %.0fs; its %d "
                    "pages are reused now (SGLANG_DISAGGREGATION_DEFERRED_DECODE_KV_RELEASE_"
                    "TIMEOUT)", h.room, now - h.since, len(h.pages),
                )
            else:
                continue
            self.held.remove(h)
            self.kv.free_pages(h.pages)
            if h.slot is not None:
                self.metadata.reset(h.slot)
                self.slots.free(h.slot)
            h.receiver.clear()
            self.released[how] += 1

    def queue_sizes(self) -> dict[str, int]:
        return {"num_decode_prealloc_queue_reqs": len(self.prealloc),
                "num_decode_transfer_queue_reqs": len(self.transfer)}

    def info(self) -> dict[str, Any]:
        return {
            "prealloc_queue": len(self.prealloc),
            "transfer_queue": len(self.transfer),
            "metadata_slots_free": self.slots.available(),
            "metadata_slots": self.num_slots,
            "held_reqs": len(self.held),
            "held_pages": sum(len(h.pages) for h in self.held),
            "held_released_on_ack": self.released["ack"],
            "held_released_on_timeout": self.released["timeout"],
            **self.describe(),
        }
