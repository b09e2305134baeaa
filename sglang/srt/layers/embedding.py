"""Token embedding and the LM head (computed only for the rows whose logits are wanted).

Vocab-parallel under tensor parallelism, as SGLang's: rank r holds rows ``[r * per, (r+1) *
per)`` of the vocabulary, ``per = ceil(vocab / tp)`` (the last rank's tail zero-padded). The
embedding looks up the ids it holds, zeroes the others and all-reduces; the LM head computes its
slice of the logits and all-gathers them. With tp=1 both are the plain layers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.srt.distributed import get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce
from sglang.srt.layers.cpu_linear import PackedWeight, pack_weight_for_cpu


class _VocabShard:
    def _init_shard(self, vocab_size: int, hidden_size: int) -> int:
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.tp_size = get_tp_size()
        per = -(-vocab_size // self.tp_size)
        self.vocab_start = get_tp_rank() * per
        self.vocab_end = min(self.vocab_start + per, vocab_size)  # rows [start, end) are real
        return per

    def load_param(self, param_name: str, tensor: torch.Tensor) -> None:
        """Copy this rank's vocabulary rows of the checkpoint's [vocab, hidden] matrix."""
        expected = (self.vocab_size, self.hidden_size)
        if tuple(tensor.shape) != expected:
            raise ValueError(f"{param_name}: shape {tuple(tensor.shape)} in the checkpoint, "
                             f"{expected} in the model")
        w = self.weight.data
        if self.tp_size == 1:
            w.copy_(tensor)
            return
        n = self.vocab_end - self.vocab_start
        w[:n].copy_(tensor[self.vocab_start : self.vocab_end])
        w[n:].zero_()


class VocabEmbedding(nn.Module, _VocabShard):
    def __init__(self, vocab_size: int, hidden_size: int):
        super().__init__()
        rows = self._init_shard(vocab_size, hidden_size)
        self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        outside = (input_ids < self.vocab_start) | (input_ids >= self.vocab_end)
        local = (input_ids - self.vocab_start).masked_fill_(outside, 0)
        out = F.embedding(local, self.weight).masked_fill_(outside.unsqueeze(-1), 0.0)
        return tp_all_reduce(out)


class LMHead(nn.Module, _VocabShard):
    """Projects hidden states to float32 logits; shares the embedding matrix when tied."""

    def __init__(self, vocab_size: int, hidden_size: int, tied_to: VocabEmbedding | None = None):
        super().__init__()
        rows = self._init_shard(vocab_size, hidden_size)
        self.tied = tied_to is not None
        if tied_to is not None:
            self.weight = tied_to.weight
        else:
            self.weight = nn.Parameter(torch.empty(rows, hidden_size), requires_grad=False)
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
            logits = self.packed(hidden).float()
        else:
            logits = F.linear(hidden, self.weight).float()
        if self.tp_size == 1:
            return logits
        return tp_all_gather(logits, dim=-1)[..., : self.vocab_size]
