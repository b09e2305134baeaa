"""Linear layers, including the fused ones (QKV, gate_up) that load their checkpoint shards.

On CPU in bfloat16 the weights are packed once (``prepack_cpu``) for the machine's fastest
matmul, oneDNN's or ``cpu_gemm.c``'s (``cpu_linear``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

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


class MergedLinear(Linear):
    """Several projections of the same input stacked on the output dim: one matmul for all."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = list(output_sizes)
        self.offsets = [sum(output_sizes[:i]) for i in range(len(output_sizes))]

    def load_shard(self, param_name: str, shard: int, tensor: torch.Tensor) -> None:
        """Copy checkpoint tensor ``tensor`` (weight or bias of projection ``shard``) in place."""
        param = getattr(self, param_name)
        start, size = self.offsets[shard], self.output_sizes[shard]
        if tensor.shape[0] != size or tensor.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"shard {shard} of {param_name}: expected {(size, *param.shape[1:])}, "
                f"got {tuple(tensor.shape)}"
            )
        param.data[start : start + size].copy_(tensor)


class GateUpLinear(MergedLinear):
    """The fused [gate; up] projection of a SiLU MLP, returning ``silu(gate) * up``.

    Packed for oneDNN (CPU, bf16) it runs as two oneDNN calls with the SiLU and the product
    fused in, so neither the [T, 2 * intermediate] output nor the activation pass is
    materialised. Packed as panels it is one matmul, then the activation.
    """

    def __init__(self, in_features: int, intermediate_size: int, bias: bool = False):
        super().__init__(in_features, [intermediate_size, intermediate_size], bias)
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
