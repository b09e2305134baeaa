"""What the scheduler hands the model runner for one forward pass (read by layers and models,
so it lives at their level; ``ForwardMode`` is in the bottom layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from sglang.srt.base_types import ForwardMode


@dataclass
class ForwardBatch:
    """A batch of requests, flattened.

    For request ``i`` the new tokens are ``input_ids[start_i : start_i + extend_lens[i]]`` with
    ``start_i = sum(extend_lens[:i])``. Its whole sequence after this pass has ``seq_lens[i]``
    tokens whose KV slots are ``kv_indices[i]`` (prefix slots first, then the new tokens' slots,
    which also appear in ``out_cache_loc``). ``prefix_lens[i] = seq_lens[i] - extend_lens[i]``.
    """

    mode: ForwardMode
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    out_cache_loc: torch.Tensor  # [T] int64: KV slots that receive the new tokens' K/V
    seq_lens: list[int]
    extend_lens: list[int]
    kv_indices: list[torch.Tensor]  # per request, [seq_len] int64 slot indices
    # Rows of the flattened token dimension whose logits are wanted, in output order.
    # Default (None): the last new token of every request.
    logits_indices: Optional[torch.Tensor] = None
    # Filled lazily by the attention backend (padded decode indices, masks, ...).
    attn_cache: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens)

    @property
    def prefix_lens(self) -> list[int]:
        return [s - e for s, e in zip(self.seq_lens, self.extend_lens)]

    def last_token_rows(self) -> torch.Tensor:
        ends = torch.tensor(self.extend_lens, dtype=torch.int64).cumsum(0) - 1
        return ends.to(self.input_ids.device)
