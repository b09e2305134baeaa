"""Builds the PD layer a prefill or decode scheduler runs with (``Scheduler(make_disagg=...)``)."""

from __future__ import annotations

from typing import Optional

from sglang.srt.disaggregation.decode import DecodeQueues
from sglang.srt.disaggregation.prefill import PrefillQueues
from sglang.srt.disaggregation.queues_common import Connect
from sglang.srt.managers.disagg_protocol import DisaggLayer, PDContext


def make_pd_layer(ctx: PDContext, connect: Optional[Connect] = None) -> DisaggLayer:
    """``connect(backend, kv_args, mode)`` builds the data plane (default: the configured
    transfer backend); in-process tests pass an in-memory link."""
    mode = ctx.args.disaggregation_mode
    if mode == "prefill":
        return PrefillQueues(ctx, connect)
    if mode == "decode":
        return DecodeQueues(ctx, connect)
    raise ValueError(f"no PD layer for --disaggregation-mode {mode!r}")
