"""The bf16 linear kernel for CPUs without native bf16 (``sglang/srt/layers/cpu_gemm.c``).

Against a float32 matmul rounded once to bf16 (torch's bf16 linear contract), over shapes with
column tails (N not a multiple of the 16-column panels), odd K, row counts on both sides of the
6-row microkernel and the 96-row chunk, row-strided inputs and biases; a row's result must not
depend on the batch it is in; and the layers that use it (Linear, GateUpLinear, LMHead) against
their unpacked torch forms.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sglang.srt.layers import cpu_kernel_build, cpu_kernels
from sglang.srt.layers.cpu_linear import OneDnnWeight, PanelWeight
from sglang.srt.layers.embedding import LMHead
from sglang.srt.layers.linear import GateUpLinear, Linear

kernels = cpu_kernels.get()
pytestmark = pytest.mark.skipif(
    kernels is None or not kernels.gemm_supported,
    reason="the bf16 GEMM kernel needs a C compiler and an AVX2 + FMA CPU; torch paths only",
)


def _close_to_rounded(got: torch.Tensor, ref32: torch.Tensor, abs_sum: torch.Tensor) -> None:
    """``got`` is ``ref32`` rounded to bf16, up to one bf16 ulp where the float32 sums (in
    another order: an error of a few float32 ulps of ``abs_sum``, the sum of the products'
    magnitudes) sit next to a rounding boundary."""
    assert got.dtype == torch.bfloat16 and got.shape == ref32.shape
    err = (got.float() - ref32).abs()
    assert (err <= ref32.abs() * 2**-7 + abs_sum * 2e-6).all(), err.max()
    exact = (got == ref32.bfloat16()).float().mean().item()
    assert exact >= 0.97, exact


@pytest.mark.parametrize("n,k", [(48, 64), (100, 37), (1536, 576), (576, 1536), (17, 8)])
@pytest.mark.parametrize("m", [1, 5, 6, 7, 33, 130])
@pytest.mark.parametrize("bias", [False, True])
def test_gemm_matches_float32_matmul(n, k, m, bias):
    g = torch.Generator().manual_seed(n * 1000 + k + m)
    w = torch.randn(n, k, generator=g).bfloat16()
    b = torch.randn(n, generator=g).bfloat16() if bias else None
    wide = torch.randn(m, k + 9, generator=g).bfloat16()
    x = wide[:, 3 : 3 + k]  # row-strided, as slices of a fused projection's output
    got = kernels.gemm(x, kernels.gemm_pack(w), n, b)
    ref = x.float() @ w.float().T + (b.float() if bias else 0.0)
    _close_to_rounded(got, ref, x.float().abs() @ w.float().abs().T)


def test_gemm_row_does_not_depend_on_its_batch():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(200, 96, generator=g).bfloat16()
    x = torch.randn(101, 96, generator=g).bfloat16()
    panels = kernels.gemm_pack(w)
    full = kernels.gemm(x, panels, 200)
    for rows in (slice(0, 1), slice(50, 51), slice(7, 20), slice(95, 101)):
        assert torch.equal(kernels.gemm(x[rows], panels, 200), full[rows])
    assert kernels.gemm(x[:0], panels, 200).shape == (0, 200)


def test_gemm_rejects_what_it_cannot_take():
    panels = kernels.gemm_pack(torch.zeros(16, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="bf16 rows"):
        kernels.gemm(torch.zeros(2, 8), panels, 16)
    with pytest.raises(ValueError, match="width 8"):
        kernels.gemm(torch.zeros(2, 9, dtype=torch.bfloat16), panels, 16)
    with pytest.raises(ValueError, match="2-D bf16"):
        kernels.gemm_pack(torch.zeros(16, 8))


RUNNABLE = [isa for isa in cpu_kernel_build.ISAS
            if isa.requires <= cpu_kernel_build.cpu_features()]


@pytest.mark.parametrize("isa", RUNNABLE, ids=[isa.name for isa in RUNNABLE])
def test_gemm_of_each_build_this_cpu_runs(isa):
    """The AVX2 build's GEMM (an AVX2-only CPU's) equals the loaded build's bit for bit: the
    same float32 sums in the same order; the portable build has none."""
    lib = cpu_kernels.CpuKernels(cpu_kernel_build.build(isa))
    if isa.name == "portable":
        assert not lib.gemm_supported
        return
    g = torch.Generator().manual_seed(5)
    w = torch.randn(100, 37, generator=g).bfloat16()
    x = torch.randn(7, 37, generator=g).bfloat16()
    ours = lib.gemm(x, lib.gemm_pack(w), 100)
    assert torch.equal(ours, kernels.gemm(x, kernels.gemm_pack(w), 100))


@pytest.mark.parametrize("bias", [False, True])
def test_layers_packed_as_panels_match_torch(bias, monkeypatch):
    """Whatever oneDNN can do on this machine, panels forced: the layers equal their unpacked
    torch forms within one bf16 rounding (GateUp: of the gate and up before the activation)."""
    monkeypatch.setattr(OneDnnWeight, "pack", staticmethod(lambda weight: None))
    torch.manual_seed(0)
    x = torch.randn(33, 64, dtype=torch.bfloat16)
    lin, gu = Linear(64, 48, bias=bias), GateUpLinear(64, 80, bias=bias)
    head = LMHead(1000, 64)
    for mod in (lin, gu, head):
        for p in mod.parameters():
            p.data = torch.randn_like(p, dtype=torch.bfloat16) * 0.2
    w_lin, w_gu, w_head = lin.weight.clone(), gu.weight.clone(), head.weight.clone()
    b_lin = lin.bias.clone().float() if bias else 0.0
    b_gu = gu.bias.clone().float() if bias else 0.0
    ref_gu = F.linear(x, w_gu, gu.bias)
    assert lin.prepack_cpu() and gu.prepack_cpu() and head.prepack_cpu()
    assert all(isinstance(m.packed, PanelWeight) for m in (lin, gu, head))
    assert lin.weight.numel() == 0 and gu.weight.numel() == 0  # plain copies freed
    xa = x.float().abs()
    _close_to_rounded(lin(x), x.float() @ w_lin.float().T + b_lin, xa @ w_lin.float().abs().T)
    _close_to_rounded(gu.packed(x, gu.bias), x.float() @ w_gu.float().T + b_gu,
                      xa @ w_gu.float().abs().T)
    inter = 80
    expect = F.silu(ref_gu[:, :inter]) * ref_gu[:, inter:]
    assert torch.allclose(gu(x).float(), expect.float(), rtol=2e-2, atol=2e-2)
    logits = head(x)
    assert logits.dtype == torch.float32
    _close_to_rounded(logits.bfloat16(), x.float() @ w_head.float().T, xa @ w_head.float().abs().T)
