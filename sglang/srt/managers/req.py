"""One request's state inside the scheduler."""

from __future__ import annotations

import time
from typing import Any, Optional

from sglang.srt.base_types import abort_reason
from sglang.srt.managers.io_struct import TokenizedGenerateReqInput


class Req:
    def __init__(self, r: TokenizedGenerateReqInput, context_len: int):
        self.rid = r.rid
        self.origin_input_ids = list(r.input_ids)
        self.sampling_params = r.sampling_params
        self.return_logprob = r.return_logprob
        self.top_logprobs_num = r.top_logprobs_num
        self.stream = r.stream
        self.bootstrap_host = r.bootstrap_host
        self.bootstrap_port = r.bootstrap_port
        self.bootstrap_room = r.bootstrap_room
        n_in = len(self.origin_input_ids)
        # SGLang: -1 means "the last input token only".
        start = r.logprob_start_len if r.logprob_start_len >= 0 else n_in - 1
        self.logprob_start_len = min(max(start, 0), n_in - 1)
        self.max_new_tokens = min(self.sampling_params.max_new_tokens, context_len - n_in)
        self.output_ids: list[int] = []
        self.finished_reason: Optional[dict[str, Any]] = None
        self.created = time.monotonic()
        # KV state
        self.req_pool_idx: Optional[int] = None
        self.pages: list[int] = []
        self.prefix_pages = 0  # leading pages borrowed from the radix cache (locked)
        self.last_node: Any = None
        self.kv_len = 0  # positions whose KV is in the pool
        self.table_len = 0  # positions written into the req-to-token table
        self.cached_tokens = 0  # prefix-cache hit reported to the client (first admission)
        self.admitted_once = False
        # logprob increments not yet sent
        self.pending_logprobs: list[tuple[float, int]] = []
        self.pending_top: list[list[tuple[float, int]]] = []
        self.input_token_logprobs: list[tuple[Optional[float], int]] = []
        self.input_top_logprobs: list[Optional[list[tuple[float, int]]]] = []
        self.input_logprobs_sent = False
        self.sent_len = 0  # output ids already sent to the tokenizer manager
        self.transfer: Optional[dict[str, Any]] = None
        # PD
        self.disagg: Any = None  # the KVSender / KVReceiver of this request
        self.metadata_index: Optional[int] = None
        self.sent_pages = 0  # prefill: pages already handed to the sender

    @property
    def fill_ids(self) -> list[int]:
        return self.origin_input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and not self.input_logprobs_sent and not self.output_ids

    def reset_kv(self) -> None:
        self.req_pool_idx = None
        self.pages = []
        self.prefix_pages = 0
        self.last_node = None
        self.kv_len = 0
        self.table_len = 0

    def finish(self, reason: dict[str, Any]) -> None:
        if self.finished_reason is None:
            self.finished_reason = reason

    def abort(self, message: str, status_code: int = 500) -> None:
        self.finish(abort_reason(message, status_code))

    def __repr__(self) -> str:
        return f"Req(rid={self.rid}, room={self.bootstrap_room}, len={self.seq_len})"
