"""Linear layers, including the fused ones (QKV, gate_up) that load their checkpoint shards.

Tensor parallelism (``sglang.srt.distributed``), as SGLang splits: the fused QKV and gate_up
projections are column-parallel (each rank holds its heads' / its intermediate slice's output
rows, cut from the checkpoint tensors at load time); o_proj and down_proj are row-parallel (each
rank holds a slice of the input columns; the partial outputs are summed by an all-reduce, then
the bias is added once). With tp=1 they are the plain layers (no collective).

On CPU in bfloat16 the weights are packed once (``prepack_cpu``) for the machine's fastest
matmul, oneDNN's or ``cpu_gemm.c``'s (``cpu_linear``); a rank packs its own shard.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.srt.distributed import get_tp_rank, get_tp_size, head_split, tp_all_reduce
from sglang.srt.layers.activation import silu_and_mul
from sglang.srt.layers.cpu_linear import OneDnnWeight, PackedWeight, pack_weight_for_cpu


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.packed: Optional[PackedWeight] = None

    def prepack_cpu(self) -> bool:
        """Switch to a pre-packed weight (CPU, bf16) and free the plain one; True if done."""
        packed = pack_weight_for_cpu(self.weight)
        if packed is None:
            return False
        self.packed = packed
        self.weight.data = self.weight.data.new_empty(0)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return self.packed(x, self.bias)
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(Linear):
    """``in_features`` (the whole layer's) split over the TP ranks; outputs all-reduced."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        tp, rank = get_tp_size(), get_tp_rank()
        if in_features % tp:
            raise ValueError(f"--tp-size {tp} does not divide the input size {in_features}")
        super().__init__(in_features // tp, out_features, bias)
        self.tp_size = tp
        self.full_in = in_features
        self.in_start = rank * self.in_features

    def load_param(self, param_name: str, tensor: torch.Tensor) -> None:
        """Copy this rank's columns of the checkpoint's weight (the whole bias)."""
        param = getattr(self, param_name)
        expected = (self.out_features, self.full_in) if param_name == "weight" else param.shape
        if tuple(tensor.shape) != tuple(expected):
            raise ValueError(f"{param_name}: shape {tuple(tensor.shape)} in the checkpoint, "
                             f"{tuple(expected)} in the model")
        if param_name == "weight" and self.tp_size > 1:
            tensor = tensor.narrow(1, self.in_start, self.in_features)
        param.data.copy_(tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return super().forward(x)
        out = self.packed(x, None) if self.packed is not None else F.linear(x, self.weight)
        out = tp_all_reduce(out)
        return out if self.bias is None else out.add_(self.bias)


class MergedLinear(Linear):
    """Several projections of the same input stacked on the output dim: one matmul for all.

    ``shard_slices[i]`` = (first row, checkpoint rows) of projection i: a tensor-parallel rank
    holds ``output_sizes[i]`` rows of the checkpoint's tensor from that row (default: all)."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 shard_slices: Optional[list[tuple[int, int]]] = None):
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = list(output_sizes)
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]
        self.shard_slices = shard_slices or [(0, n) for n in output_sizes]

    def load_shard(self, param_name: str, shard: int, tensor: torch.Tensor) -> None:
        """Copy checkpoint tensor ``tensor`` (weight or bias of projection ``shard``) in place."""
        param = getattr(self, param_name)
        start, size = self.offsets[shard], self.output_sizes[shard]
        src, full = self.shard_slices[shard]
        if tensor.shape[0] != full or tensor.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"shard {shard} of {param_name}: expected {(full, *param.shape[1:])}, "
                f"got {tuple(tensor.shape)}"
            )
        if size != full:
            tensor = tensor.narrow(0, src, size)
        param.data[start : start + size].copy_(tensor)


class QKVParallelLinear(MergedLinear):
    """[q; k; v] of this rank's heads (``head_split``: KV heads replicated when fewer than
    ranks)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False):
        split = head_split(num_heads, num_kv_heads, get_tp_size(), get_tp_rank())
        self.split = split
        q, kv = split.num_heads * head_dim, split.num_kv_heads * head_dim
        slices = [(split.q_start * head_dim, num_heads * head_dim),
                  (split.kv_start * head_dim, num_kv_heads * head_dim),
                  (split.kv_start * head_dim, num_kv_heads * head_dim)]
        super().__init__(hidden_size, [q, kv, kv], bias, slices)


class GateUpLinear(MergedLinear):
    """The fused [gate; up] projection of a SiLU MLP, returning ``silu(gate) * up``.

    Packed for oneDNN (CPU, bf16) it runs as two oneDNN calls with the SiLU and the product
    fused in, so neither the [T, 2 * intermediate] output nor the activation pass is
    materialised. Packed as panels it is one matmul, then the activation.
    """

    def __init__(self, in_features: int, intermediate_size: int, bias: bool = False):
        tp, rank = get_tp_size(), get_tp_rank()
        if intermediate_size % tp:
            raise ValueError(
                f"--tp-size {tp} does not divide the intermediate size {intermediate_size}"
            )
        inter = intermediate_size // tp  # this rank's slice of gate and of up
        part = (rank * inter, intermediate_size)
        super().__init__(in_features, [inter, inter], bias, [part, part])
        self.packed_gate: Optional[OneDnnWeight] = None
        self.packed_up: Optional[OneDnnWeight] = None

    def prepack_cpu(self) -> bool:
        inter = self.output_sizes[0]
        onednn = (OneDnnWeight,)
        gate = pack_weight_for_cpu(self.weight[:inter].contiguous(), onednn)
        up = None
        if gate is not None:  # (without oneDNN's bf16 path, one refused pack is enough)
            up = pack_weight_for_cpu(self.weight[inter:].contiguous(), onednn)
        if gate is None or up is None:
            return super().prepack_cpu()  # panels of the merged weight, or nothing
        self.packed_gate, self.packed_up = gate, up
        self.weight.data = self.weight.data.new_empty(0)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_gate is not None and self.packed_up is not None:
            inter = self.output_sizes[0]
            b_gate = b_up = None
            if self.bias is not None:
                b_gate, b_up = self.bias[:inter], self.bias[inter:]
            gate = self.packed_gate(x, b_gate, "swish")
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, gate, self.packed_up.packed, b_up, "mul"
            )
        if self.packed is not None:
            return silu_and_mul(self.packed(x, self.bias))
        return silu_and_mul(F.linear(x, self.weight, self.bias))
