"""RMSNorm as in HF Llama (normalise in float32, cast back, scale), with a fused residual add.

bf16 rows on CPU go through one C kernel (``cpu_kernels``) instead of about ten torch ops.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sglang.srt.layers import cpu_kernels

_FUSED = hasattr(F, "rms_norm")


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / rms(x)`` over the last dim, computed in float32, returned in ``x.dtype``."""
    xf = x.float()
    if _FUSED:  # one kernel; same numbers as the unfused formula below
        return F.rms_norm(xf, (x.shape[-1],), None, eps).to(x.dtype)
    var = xf.pow(2).mean(-1, keepdim=True)
    return (xf * torch.rsqrt(var + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None
    ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Without ``residual``: norm(x). With it: ``residual += x`` (in place), then
        ``(norm(residual), residual)``."""
        rows_ok = x.dim() == 2 and x.stride(1) == 1
        rows_ok = rows_ok and (residual is None or residual.stride(1) == 1)
        if rows_ok and (k := cpu_kernels.usable(x, self.weight)):
            if residual is None:
                return k.add_rmsnorm(x, None, self.weight, self.eps)
            return k.add_rmsnorm(x, residual, self.weight, self.eps), residual
        if residual is None:
            return self.weight * rms_normalize(x, self.eps)
        residual.add_(x)
        return self.weight * rms_normalize(residual, self.eps), residual
