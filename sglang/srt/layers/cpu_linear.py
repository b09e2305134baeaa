"""bf16 weights packed once for the fastest matmul this CPU has.

``pack_weight_for_cpu`` picks, per machine:

- ``OneDnnWeight``: where oneDNN has a native bf16 path (AVX512-BF16, AMX), its opaque packed
  layout; without it every call would re-lay out the weight (about 1.5x slower).
- ``PanelWeight``: where it has none (oneDNN refuses to pack; e.g. an AVX2-only CPU), the panels
  of ``cpu_gemm.c``: bf16 in memory, widened to float32 in registers. torch's own bf16 matmul
  runs at 10-18 GFLOP/s there (measured on 2 Zen 3 cores), this kernel at 110-160 from 32 rows.

Both return ``bf16(x @ w.T + bias)`` with float32 sums, as torch's bf16 linear does; they differ
from it only in summation order (within one bf16 rounding). ``SGLANG_CPU_GEMM`` (``onednn``,
``panel``, ``torch``) keeps to one path, e.g. to run an AVX2 machine's panels on a CPU where
oneDNN would be picked.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from sglang.srt.env import envs
from sglang.srt.layers import cpu_kernels


class PackedWeight(Protocol):
    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor: ...


def _mkldnn_packing_available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


class OneDnnWeight:
    def __init__(self, packed: torch.Tensor):
        self.packed = packed

    @staticmethod
    def pack(weight: torch.Tensor) -> Optional["OneDnnWeight"]:
        if envs.cpu_gemm not in ("auto", "onednn") or not _mkldnn_packing_available():
            return None
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        except RuntimeError:
            return None
        return OneDnnWeight(packed)

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 attr: str = "none") -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, bias, attr, [], "")


class PanelWeight:
    def __init__(self, weight: torch.Tensor, kernels: cpu_kernels.CpuKernels):
        self.kernels = kernels
        self.out_features, self.in_features = weight.shape
        self.panels = kernels.gemm_pack(weight.detach())

    @staticmethod
    def pack(weight: torch.Tensor) -> Optional["PanelWeight"]:
        k = cpu_kernels.get() if envs.cpu_gemm in ("auto", "panel") else None
        if k is None or not k.gemm_supported:
            return None
        return PanelWeight(weight, k)

    def __call__(self, x: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.stride(1) != 1 or x2.dtype != torch.bfloat16:
            x2 = x2.to(torch.bfloat16).contiguous()
        out = self.kernels.gemm(x2, self.panels, self.out_features, bias)
        return out.view(*lead, self.out_features)


def pack_weight_for_cpu(weight: torch.Tensor, kinds: tuple = (OneDnnWeight, PanelWeight)
                        ) -> Optional[PackedWeight]:
    """A packed copy of a bf16 CPU weight [out, in] (the first of ``kinds`` this machine can
    pack), or None where none applies (another dtype or device, or no fast path on this machine:
    then torch's ``F.linear`` is used)."""
    if weight.device.type != "cpu" or weight.dtype != torch.bfloat16 or weight.dim() != 2:
        return None
    for kind in kinds:
        packed = kind.pack(weight)
        if packed is not None:
            return packed
    return None
