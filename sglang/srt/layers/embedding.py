"""Token embedding and the LM head (computed only for the rows whose logits are wanted)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.srt.layers.cpu_linear import PackedWeight, pack_weight_for_cpu


class VocabEmbedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)


class LMHead(nn.Module):
    """Projects hidden states to float32 logits; shares the embedding matrix when tied."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None):
        super().__init__()
        self.tied = tied_to is not None
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(vocab_size, hidden_size), requires_grad=False)
        self.packed: Optional[PackedWeight] = None

    def prepack_cpu(self) -> bool:
        """Pack for the CPU's fastest bf16 matmul (``cpu_linear``). A tied weight stays for the
        embedding lookup."""
        self.packed = pack_weight_for_cpu(self.weight)
        if self.packed is not None and not self.tied:
            self.weight.data = self.weight.data.new_empty(0)
        return self.packed is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(hidden).float()
        return F.linear(hidden, self.weight).float()
