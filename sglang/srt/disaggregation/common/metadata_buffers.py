"""Metadata ("aux") rows: what travels with the KV besides the pages themselves.

The prefill writes the first output token, its logprobs and the request's room into row
``aux_index`` of these host arrays; the transfer engine copies every buffer's row into the
decode's row ``dst_aux_index``; the decode reads it back with ``get_buf``. Each row is at least
64 bytes (RDMA needs it). Rows are plain numpy memory, registered with the transfer engine.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Optional

import numpy as np

MAX_TOP_LOGPROBS = 128


class MetadataBuffers:
    def __init__(self, size: int, max_top_logprobs: int = MAX_TOP_LOGPROBS):
        if size < 1:
            raise ValueError(f"MetadataBuffers needs at least one row, got {size}")
        self.size = size
        self.max_top_logprobs = max_top_logprobs
        self.output_ids = np.zeros((size, 16), dtype=np.int32)
        self.cached_tokens = np.zeros((size, 16), dtype=np.int32)
        self.output_token_logprobs_val = np.zeros((size, 16), dtype=np.float32)
        self.output_token_logprobs_idx = np.zeros((size, 16), dtype=np.int32)
        self.output_top_logprobs_val = np.zeros((size, max_top_logprobs), dtype=np.float32)
        self.output_top_logprobs_idx = np.zeros((size, max_top_logprobs), dtype=np.int32)
        # Last, so that a reader that sees the room also sees the rest of the row.
        self.bootstrap_room = np.zeros((size, 8), dtype=np.uint64)
        for i in range(size):
            self.reset(i)

    def buffers(self) -> list[np.ndarray]:
        return [
            self.output_ids,
            self.cached_tokens,
            self.output_token_logprobs_val,
            self.output_token_logprobs_idx,
            self.output_top_logprobs_val,
            self.output_top_logprobs_idx,
            self.bootstrap_room,
        ]

    def ptrs_lens_item_lens(self) -> tuple[list[int], list[int], list[int]]:
        """(aux_data_ptrs, aux_data_lens, aux_item_lens) for KVArgs."""
        bufs = self.buffers()
        return (
            [int(b.ctypes.data) for b in bufs],
            [int(b.nbytes) for b in bufs],
            [int(b[0].nbytes) for b in bufs],
        )

    def set_buf(
        self,
        idx: int,
        room: int,
        first_token: int,
        cached_tokens: int = 0,
        logprob: Optional[float] = None,
        top_logprobs: Optional[list[tuple[float, int]]] = None,
    ) -> None:
        """Fill row ``idx`` (prefill side, before the last chunk is sent)."""
        self.reset(idx)
        self.output_ids[idx, 0] = first_token
        self.cached_tokens[idx, 0] = cached_tokens
        if logprob is not None:
            self.output_token_logprobs_val[idx, 0] = logprob
            self.output_token_logprobs_idx[idx, 0] = first_token
        top = list(top_logprobs or [])[: self.max_top_logprobs]
        for j, (lp, tok) in enumerate(top):
            self.output_top_logprobs_val[idx, j] = lp
            self.output_top_logprobs_idx[idx, j] = tok
        self.bootstrap_room[idx, 0] = np.uint64(room)

    def get_buf(self, idx: int) -> dict[str, Any]:
        """Read row ``idx`` (decode side, after Success)."""
        lp = float(self.output_token_logprobs_val[idx, 0])
        tops = self.output_top_logprobs_idx[idx]
        n = int(np.argmax(tops < 0)) if (tops < 0).any() else tops.shape[0]
        return {
            "room": int(self.bootstrap_room[idx, 0]),
            "first_token": int(self.output_ids[idx, 0]),
            "cached_tokens": int(self.cached_tokens[idx, 0]),
            "logprob": None if math.isnan(lp) else lp,
            "top_logprobs": [
                (float(self.output_top_logprobs_val[idx, j]), int(tops[j])) for j in range(n)
            ],
        }

    def reset(self, idx: int) -> None:
        """Empty row: room 0 (the decode's "not arrived" mark), no logprob, no top list."""
        for b in self.buffers():
            b[idx] = 0
        self.output_token_logprobs_val[idx] = np.nan
        self.output_top_logprobs_idx[idx] = -1


class MetadataSlotAllocator:
    """Free list of metadata rows; thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._free = list(range(size - 1, -1, -1))
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def alloc(self) -> Optional[int]:
        with self._lock:
            if not self._free:
                return None
            i = self._free.pop()
            self._used.add(i)
            return i

    def free(self, idx: int) -> None:
        with self._lock:
            if idx not in self._used:
                raise ValueError(f"metadata slot {idx} is not allocated")
            self._used.remove(idx)
            self._free.append(idx)

    def available(self) -> int:
        with self._lock:
            return len(self._free)
