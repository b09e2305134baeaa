"""Rotary position embedding (HF "rotate_half" convention) with a precomputed cos/sin table."""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
import torch.nn as nn

from sglang.srt.layers import cpu_kernels

logger = logging.getLogger(__name__)


def rope_inv_freq(hf_config: Any, head_dim: int) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2] float32, attention_scaling) for the config's RoPE flavour.

    Reads ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4.x).
    """
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        theta, rope_type = float(params["rope_theta"]), params.get("rope_type", "default")
    else:
        scaling = getattr(hf_config, "rope_scaling", None) or {}
        theta = float(getattr(hf_config, "rope_theta", 10000.0))
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
        return 1.0 / (theta**exponent), 1.0
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    if rope_type not in ROPE_INIT_FUNCTIONS:
        raise ValueError(f"unsupported rope type {rope_type!r}")
    if rope_type in ("dynamic", "longrope"):
        logger.warning("rope type %s: frequencies fixed at their short-context values", rope_type)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, torch.device("cpu"))
    return inv_freq.float().cpu(), float(scaling)


class RotaryEmbedding(nn.Module):
    def __init__(
        self,
        head_dim: int,
        max_positions: int,
        inv_freq: torch.Tensor,
        attention_scaling: float = 1.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.head_dim = head_dim
        pos = torch.arange(max_positions, dtype=torch.int64).float()
        freqs = pos[:, None] * inv_freq.float()[None, :].to(pos.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * attention_scaling).to(dtype)
        sin = (emb.sin() * attention_scaling).to(dtype)
        half = head_dim // 2
        # rotate_half(x) * sin == flip_halves(x) * [-sin_lo, sin_hi]
        sin_signed = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin_signed, persistent=False)

    def lookup(self, positions: torch.Tensor) -> "RopeBatch":
        """The rotation for the tokens at ``positions`` [T]; once per forward."""
        if positions.numel() and int(positions.max()) >= self.cos_cache.shape[0]:
            raise ValueError(
                f"position {int(positions.max())} is beyond the RoPE table "
                f"({self.cos_cache.shape[0]} positions)"
            )
        kernel_ok = self.head_dim <= cpu_kernels.MAX_HEAD_DIM and self.head_dim % 2 == 0
        if kernel_ok and positions.dtype == torch.int64 and cpu_kernels.usable(self.cos_cache):
            return RopeBatch(positions.contiguous(), self.cos_cache, self.sin_cache, kernel=True)
        cos, sin = self.cos_cache[positions], self.sin_cache[positions]
        return RopeBatch(positions, cos.unsqueeze(1), sin.unsqueeze(1))

    @staticmethod
    def apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` [T, heads, head_dim] (may be a strided view); returns a new tensor."""
        t, n, d = x.shape
        swapped = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
        return torch.addcmul(x * cos, swapped, sin)


class RopeBatch:
    """cos and signed sin for one forward's tokens: gathered per token [T, 1, head_dim] for the
    torch path, or the whole tables with the positions for the bf16 CPU kernel."""

    def __init__(self, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 kernel: bool = False):
        self.positions, self.cos, self.sin = positions, cos, sin
        self.kernel: Optional[cpu_kernels.CpuKernels] = cpu_kernels.get() if kernel else None

    def rotate(self, x: torch.Tensor, heads: int, kv_heads: int) -> torch.Tensor:
        """Rotate ``x`` [T, heads + kv_heads, head_dim]: in place with the kernel (x may be a
        row-strided view with packed heads), else into a new tensor."""
        if self.kernel is not None:
            if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
                self.kernel.rope(x, self.positions, self.cos, self.sin, heads, kv_heads)
                return x
            # a layout the kernel does not take: gather per token once, for the torch path
            self.cos = self.cos[self.positions].unsqueeze(1)
            self.sin = self.sin[self.positions].unsqueeze(1)
            self.kernel = None
        return RotaryEmbedding.apply(x, self.cos, self.sin)
