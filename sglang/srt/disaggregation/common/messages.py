"""The control-plane messages between a decode manager and a prefill manager (ZMQ PUSH/PULL).

Every message is one msgpack frame: a dict with a type tag ``t``. ``peer`` is always the
sender's own PULL endpoint ("ip:port"), which is where replies go and how peers are named.

  decode -> prefill  RegisterMsg   once per prefill: where the decode's KV and aux rows live
  decode -> prefill  MetadataMsg   per request: destination pages and metadata row of a room
  decode -> prefill  AbortMsg      per request: the decode gave up on a room
  prefill -> decode  StatusMsg     per request: Success, or Failed with the reason
  prefill -> decode  AbortAckMsg   per abort: the prefill will not write into that room's
                                   pages any more (its queued writes for it drained or dropped)
  prefill -> decode  PingMsg       probe of a decode a write to which failed
  decode -> prefill  PongMsg       the answer: the prefill takes the decode back

Every peer is untrusted: ``decode`` checks each field's type and refuses unknown or missing
fields, so a handler only ever sees well-typed values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

import msgpack
import numpy as np


@dataclass
class RegisterMsg:
    peer: str
    engine_rank: int
    kv_ptrs: list[int]
    kv_item_len: int
    aux_ptrs: list[int]
    aux_item_lens: list[int]
    transfer: dict[str, Any] = field(default_factory=dict)  # backend's own: session, agent
    # PD across TP ranks (tp_layout.py): ``num_heads`` KV heads from the prefill rank's local
    # head ``src_head`` into this decode rank's local head ``dst_head`` of ``dst_num_heads``;
    # -1: whole pages of the same layout (same TP). ``sends_aux``: this prefill rank writes the
    # metadata row. ``tp_size``: the decode's --tp-size (for messages).
    src_head: int = 0
    dst_head: int = 0
    num_heads: int = -1
    dst_num_heads: int = -1
    sends_aux: bool = True
    tp_size: int = 1
    # the decode's scatter staging, one base per KV region (tp_staging.py); [] when it has none
    stage_ptrs: list[int] = field(default_factory=list)

    T = "register"


@dataclass
class MetadataMsg:
    peer: str
    room: int
    dst_pages: bytes  # int32 page indices, in prompt order
    dst_aux_index: int
    # how many decode ranks send this prefill rank their pages for the room (TP: tp_layout.py)
    expected_dsts: int = 1
    # dst_pages are pages of the decode's scatter staging: write whole source pages there
    staged: bool = False

    T = "metadata"

    def pages(self) -> np.ndarray:
        return np.frombuffer(self.dst_pages, dtype=np.int32)


@dataclass
class AbortMsg:
    peer: str
    room: int
    reason: str = ""  # why the decode gave up ("" or ABORTED: a client's abort)

    T = "abort"


@dataclass
class StatusMsg:
    peer: str
    room: int
    status: int  # KVPoll value: Success or Failed
    reason: str = ""
    # The prefill does not know this decode (it restarted): re-register before the next request.
    reregister: bool = False

    T = "status"


@dataclass
class AbortAckMsg:
    peer: str
    room: int

    T = "abort_ack"


@dataclass
class PingMsg:
    peer: str

    T = "ping"


@dataclass
class PongMsg:
    peer: str

    T = "pong"


Message = Union[RegisterMsg, MetadataMsg, AbortMsg, StatusMsg, AbortAckMsg, PingMsg, PongMsg]
_TYPES: dict[str, type] = {
    c.T: c for c in (RegisterMsg, MetadataMsg, AbortMsg, StatusMsg, AbortAckMsg, PingMsg, PongMsg)
}
_U64 = 1 << 64


def _valid(kind: str, v: Any) -> bool:
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) and -_U64 < v < _U64
    if kind == "list[int]":
        return isinstance(v, list) and all(_valid("int", x) for x in v)
    if kind.startswith("dict"):
        return isinstance(v, dict) and all(isinstance(k, str) for k in v)
    return isinstance(v, {"str": str, "bytes": bytes, "bool": bool}[kind])


def valid_endpoint(v: Any) -> bool:
    """"host:port" as a ZMQ tcp endpoint takes it (host: IPv4, [IPv6] or a DNS name)."""
    if not isinstance(v, str) or not 3 <= len(v) <= 300:
        return False
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return False
    return all(c.isalnum() or c in ".-_[]:" for c in host)


def encode(msg: Message) -> bytes:
    d = dataclasses.asdict(msg)
    d["t"] = msg.T
    return msgpack.packb(d, use_bin_type=True)


MAX_FRAME = 16 << 20  # a registration with NIXL agent metadata is the largest message


def decode(frame: bytes) -> Message:
    """The message in ``frame``; ValueError for anything else (garbage, truncated msgpack,
    wrong types, oversized frames)."""
    if len(frame) > MAX_FRAME:
        raise ValueError(f"control message of {len(frame)} bytes exceeds {MAX_FRAME}")
    try:
        d = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for bad input
        raise ValueError(f"control message is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"control message is not a map: {d!r:.200}")
    t = d.pop("t", None)
    cls = _TYPES.get(t) if isinstance(t, str) else None
    if cls is None:
        raise ValueError(f"unknown control message: {d!r:.200}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if set(d) - set(fields):
        raise ValueError(f"{cls.T} message with unknown fields {sorted(set(d) - set(fields))}")
    for name, f in fields.items():
        if name not in d:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{cls.T} message without field {name!r}")
        elif not _valid(str(f.type), d[name]):
            raise ValueError(f"{cls.T} message: field {name!r} is not {f.type}: {d[name]!r:.80}")
    if not valid_endpoint(d.get("peer")):
        raise ValueError(f"{cls.T} message: peer {d.get('peer')!r:.80} is not host:port")
    return cls(**d)
