"""The bottom layer: names every other layer shares, with no import from inside ``sglang``.

Owns the forward mode of a batch, the finish reasons a request ends with (the ``abort`` one and
its client-abort message ``ABORTED``), and the states of a KV transfer (``KVPoll``). Only the
standard library may be imported here; tests/test_import_layers.py checks that, and that every
other package depends only downward (README "Layout").
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ForwardMode(IntEnum):
    EXTEND = 1  # prefill / chunked prefill: one or more new tokens per request
    DECODE = 2  # exactly one new token per request


class KVPoll(IntEnum):
    """State of one KV transfer (one sender or receiver); only moves forward, except Failed."""

    Failed = 0
    Bootstrapping = 1
    WaitingForInput = 2
    Transferring = 3
    Success = 4


# The reason of every abort a client or the LB asked for (SGLang's AbortReq message).
ABORTED = "Aborted by AbortReq."


def abort_reason(message: str, status_code: int = 500) -> dict[str, Any]:
    """The ``finish_reason`` of a request that ended with an error (``meta_info.finish_reason``)."""
    return {"type": "abort", "message": message, "status_code": status_code}


def is_abort(reason: Any) -> bool:
    """Whether a ``finish_reason`` (dict, or None while running) is an abort."""
    return isinstance(reason, dict) and reason.get("type") == "abort"
