"""Layers against their HF counterparts, and the oneDNN-packed linear paths."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from sglang.srt.layers import cpu_kernels
from sglang.srt.layers.layernorm import RMSNorm
from sglang.srt.layers.cpu_linear import OneDnnWeight
from sglang.srt.layers.linear import GateUpLinear, Linear
from sglang.srt.layers.rotary_embedding import RotaryEmbedding

needs_onednn = pytest.mark.skipif(
    OneDnnWeight.pack(torch.zeros(8, 8, dtype=torch.bfloat16)) is None,
    reason="oneDNN has no native bf16 path on this CPU (its layers use the panels of "
    "cpu_gemm.c: test_cpu_gemm.py)",
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_matches_hf(dtype):
    """fp32 takes the torch path; bf16 the CPU kernel (in place on a row-strided view, as the
    model calls it on its fused QKV output), which must equal HF's bf16 arithmetic exactly
    (without a C compiler, the torch path: within bf16 rounding)."""
    d = 64
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    rope = RotaryEmbedding(d, 512, inv, dtype=dtype)
    pos = torch.tensor([0, 1, 2, 100, 200, 300, 511])
    buf = torch.randn(7, 9 * d, dtype=dtype)  # 5 rotated heads, then 4 untouched (like V)
    x = buf[:, : 5 * d].view(7, 5, d)
    emb = torch.cat([pos[:, None].float() * inv] * 2, dim=-1)
    cos, sin = emb.cos()[:, None].to(dtype), emb.sin()[:, None].to(dtype)
    ref = apply_rotary_pos_emb(x.clone(), x.clone(), cos, sin, unsqueeze_dim=0)[0].view_as(x)
    tail = buf[:, 5 * d :].clone()
    out = rope.lookup(pos).rotate(x, 3, 2)
    if dtype == torch.float32:
        assert (out - ref).abs().max() <= 1e-5
    elif cpu_kernels.get() is None:
        assert (out.float() - ref.float()).abs().max() <= 2e-2
    else:
        assert torch.equal(out, ref) and torch.equal(buf[:, 5 * d :], tail)
    with pytest.raises(ValueError, match="beyond the RoPE table"):
        rope.lookup(torch.tensor([512]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_matches_hf(dtype):
    ref = LlamaRMSNorm(96, eps=1e-5)
    ours = RMSNorm(96, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(1 + 0.1 * torch.randn(96))
        ours.weight.copy_(ref.weight)
    ref, ours = ref.to(dtype), ours.to(dtype)
    x, res = torch.randn(10, 96, dtype=dtype), torch.randn(10, 96, dtype=dtype)
    assert torch.equal(ours(x), ref(x))
    out, new_res = ours(x, res.clone())
    assert torch.equal(new_res, res + x) and torch.equal(out, ref(res + x))


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
def test_onednn_packed_linears_match_unpacked(bias):
    torch.manual_seed(0)
    x = torch.randn(33, 64, dtype=torch.bfloat16)
    lin, gu = Linear(64, 48, bias=bias), GateUpLinear(64, 80, bias=bias)
    for m in (lin, gu):
        for p in m.parameters():
            p.data = torch.randn_like(p, dtype=torch.bfloat16) * 0.2
    ref_lin, ref_gu = lin(x), gu(x)
    assert lin.prepack_cpu() and gu.prepack_cpu()
    assert lin.packed is not None and gu.packed_gate is not None
    assert torch.equal(lin(x), ref_lin)
    # The fused SiLU keeps the gate in float32 before the product: within bf16 rounding.
    assert torch.allclose(gu(x).float(), ref_gu.float(), rtol=2e-2, atol=2e-2)
    assert not Linear(4, 4).prepack_cpu()  # float32 weights stay as they are
