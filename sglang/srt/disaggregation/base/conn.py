"""The interfaces every KV transfer backend implements (mooncake, nixl, fake).

The scheduler of a prefill server owns one KVManager in "prefill" mode and one KVSender per
request; the scheduler of a decode server owns one KVManager in "decode" mode and one KVReceiver
per request. Senders and receivers are polled: their state only moves forward through KVPoll,
except that Failed overrides everything.

Life of one request (room R):
  decode:  KVReceiver(mgr, "host:bootstrap_port", R) -> Bootstrapping
           (handshake with the prefill's bootstrap server; config mismatch -> Failed)
           -> WaitingForInput once connected; scheduler allocates pages and calls
           send_metadata(dst_pages, aux_index) -> prefill learns where to write
           -> Success once the prefill says the last chunk and the aux row landed.
  prefill: KVSender(mgr, addr, R) -> Bootstrapping until the decode's metadata arrived
           -> WaitingForInput; scheduler calls init(num_pages, aux_index), runs the prompt,
           calls send(src_pages, last_chunk) per chunk (non-last chunks cover whole pages)
           -> Transferring -> Success when every write and the aux row completed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

# KVPoll and ABORTED live in the bottom layer; re-exported here for the backends.
from sglang.srt.base_types import ABORTED, KVPoll  # noqa: F401
from sglang.srt.utils.network import DEFAULT_BOOTSTRAP_PORT, LOOPBACK


class KVTransferError(RuntimeError):
    def __init__(self, bootstrap_room: int, reason: str):
        super().__init__(reason)
        self.bootstrap_room = bootstrap_room
        self.reason = reason

    def __str__(self) -> str:
        return f"KVTransferError(bootstrap_room={self.bootstrap_room}): {self.reason}"


@dataclass
class KVArgs:
    """Where this server's KV pool and metadata rows live, and what must match on both sides."""

    engine_rank: int
    kv_data_ptrs: list[int]  # one per (K|V, layer): base address of that region
    kv_data_lens: list[int]  # bytes of each region
    kv_item_len: int  # bytes of one page of one region
    aux_data_ptrs: list[int]  # one per metadata buffer
    aux_data_lens: list[int]
    aux_item_lens: list[int]  # bytes of one row of each metadata buffer
    page_size: int
    kv_dtype: str  # e.g. "torch.bfloat16"
    model_shape: dict[str, Any]  # num_layers, num_kv_heads, head_dim
    device: str = "cpu"  # "cpu" (DRAM) or "cuda" (VRAM)
    gpu_id: int = 0
    ib_device: Optional[str] = None
    local_host: str = LOOPBACK
    bootstrap_port: int = DEFAULT_BOOTSTRAP_PORT  # prefill: where its bootstrap server listens
    extra: dict[str, Any] = field(default_factory=dict)
    # the pool tensor whose (K|V, layer) regions kv_data_ptrs name, for the different-TP
    # staging copies (tp_staging.py); None: no staging (head slices go as per-token blocks)
    kv_buffer: Any = None
    # Tensor parallelism: this server's --tp-size (``engine_rank`` is the rank) and the model's
    # attention heads; ``model_shape["num_kv_heads"]`` is the model's total, and this rank's
    # pool holds the ``head_split`` share of them (0 heads: as many as KV heads, tp 1).
    tp_size: int = 1
    num_heads: int = 0


class BaseKVManager(ABC):
    """One per scheduler. Owns the transfer engine, its registered memory and control threads."""

    @abstractmethod
    def __init__(self, args: KVArgs, mode: str): ...

    @abstractmethod
    def shutdown(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Backend, protocol and device in use, for /get_server_info and the start-up log."""
        return {}


class BaseKVSender(ABC):
    @abstractmethod
    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int): ...

    @abstractmethod
    def init(self, num_pages: int, aux_index: int) -> None:
        """The prompt spans ``num_pages`` pages; the metadata row is ``aux_index``."""

    @abstractmethod
    def send(self, page_indices: np.ndarray, last_chunk: bool) -> None:
        """Write these source pages (int32) into the next destination pages; on the last chunk
        also write metadata row ``aux_index`` and signal completion. Non-blocking."""

    @abstractmethod
    def poll(self) -> KVPoll: ...

    @abstractmethod
    def failure_exception(self) -> Exception: ...

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def clear(self) -> None:
        """Forget the room (after Success or Failed was handled)."""

    def get_transfer_metric(self) -> dict[str, Any]:
        """bytes, seconds, blocks of this request's KV transfer."""
        return {}


class BaseKVReceiver(ABC):
    moves_data = True  # False for a backend that moves no bytes (fake): no room to check

    @abstractmethod
    def __init__(self, mgr: BaseKVManager, bootstrap_addr: str, bootstrap_room: int): ...

    @abstractmethod
    def send_metadata(self, page_indices: np.ndarray, aux_index: int) -> None:
        """Tell the prefill which pages (int32) and metadata row to write into."""

    @abstractmethod
    def poll(self) -> KVPoll: ...

    @abstractmethod
    def failure_exception(self) -> Exception: ...

    @abstractmethod
    def abort(self) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...

    def writes_drained(self) -> bool:
        """After a failure or abort: True once the prefill can no longer write into the pages
        given to ``send_metadata`` (it acknowledged the abort, or never had them). Until then
        the scheduler must not reuse those pages. Backends that move no data: always True."""
        return True
