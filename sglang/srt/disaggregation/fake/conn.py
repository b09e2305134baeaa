"""Fake backend: the KV life cycle without moving any data (as in SGLang).

Used for decode-only runs (``--disaggregation-transfer-backend fake``) and for any request whose
bootstrap_host is SGLang's FAKE_BOOTSTRAP_HOST "2.2.2.2": that selects these classes whatever
the configured backend, so they accept any manager. (SGLang's own server warm-up sends such a
request; this engine sends none: PD servers skip the warm-up.)
  FakeKVSender:   WaitingForInput until send(..., last_chunk=True), then Success.
  FakeKVReceiver: Bootstrapping -> WaitingForInput (first poll) -> Success after send_metadata.
  abort() on either makes it Failed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from sglang.srt.disaggregation.base.conn import (
    ABORTED,
    BaseKVManager,
    BaseKVReceiver,
    BaseKVSender,
    KVArgs,
    KVPoll,
    KVTransferError,
)

logger = logging.getLogger(__name__)


class FakeKVManager(BaseKVManager):
    def __init__(self, args: KVArgs, mode: str):
        self.args = args
        self.mode = mode

    def shutdown(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"backend": "fake", "protocol": "none", "device": ""}


class FakeKVSender(BaseKVSender):
    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int):
        self.bootstrap_room = bootstrap_room
        self.status = KVPoll.WaitingForInput
        self.reason = ""

    def init(self, num_pages: int, aux_index: int) -> None:
        pass

    def send(self, page_indices: np.ndarray, last_chunk: bool) -> None:
        if last_chunk and self.status != KVPoll.Failed:
            self.status = KVPoll.Success
            logger.debug("Request %d: fake send done", self.bootstrap_room)

    def poll(self) -> KVPoll:
        return self.status

    def failure_exception(self) -> Exception:
        return KVTransferError(self.bootstrap_room, self.reason or "Failed (fake backend)")

    def abort(self) -> None:
        if self.status != KVPoll.Success:
            self.status, self.reason = KVPoll.Failed, ABORTED

    def clear(self) -> None:
        pass


class FakeKVReceiver(BaseKVReceiver):
    moves_data = False

    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int):
        self.bootstrap_room = bootstrap_room
        self.status = KVPoll.Bootstrapping
        self.reason = ""

    def send_metadata(self, page_indices: np.ndarray, aux_index: int) -> None:
        if self.status != KVPoll.Failed:
            self.status = KVPoll.Success
            logger.debug("Request %d: fake receive done", self.bootstrap_room)

    def poll(self) -> KVPoll:
        if self.status == KVPoll.Bootstrapping:
            self.status = KVPoll.WaitingForInput
        return self.status

    def failure_exception(self) -> Exception:
        return KVTransferError(self.bootstrap_room, self.reason or "Failed (fake backend)")

    def abort(self) -> None:
        if self.status != KVPoll.Success:
            self.status, self.reason = KVPoll.Failed, ABORTED

    def clear(self) -> None:
        pass
