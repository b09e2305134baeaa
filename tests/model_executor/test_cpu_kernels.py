"""The bf16 CPU kernels (``sglang/srt/layers/cpu_kernels.c``).

Decode attention over scattered pool rows against float32 SDPA, for the specialised shapes
(SmolLM2's 9/3 heads x 64, Llama's 32/8 x 128), the generic vector loop (head_dim 80) and the
portable loop (head_dim 40; and each build of another instruction set this CPU runs). Then a bf16
SmolLM2-shaped model through the runner, kernels on against kernels off, both against HF in
float32.
The RMSNorm and RoPE kernels are checked for exact equality with HF in ``test_layers.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from me_helpers import PagedDriver, hf_logits, random_llama, save_and_load
from test_smollm_shape import SMOLLM2_135M

from sglang.srt.layers import cpu_kernel_build, cpu_kernels

kernels = cpu_kernels.get()
pytestmark = pytest.mark.skipif(
    kernels is None, reason="CPU kernels did not build here (no C compiler?); torch paths only"
)


def _reference(q, k_pool, v_pool, idx, lens, heads, kv_heads, scale):
    d = q.shape[1] // heads
    out = []
    for b in range(q.shape[0]):
        n = int(lens[b])
        rows = idx[b, :n]
        k = k_pool[rows].float().view(n, kv_heads, d).transpose(0, 1)[None]
        v = v_pool[rows].float().view(n, kv_heads, d).transpose(0, 1)[None]
        qb = q[b].float().view(1, heads, 1, d)
        out.append(F.scaled_dot_product_attention(qb, k, v, scale=scale, enable_gqa=True))
    return torch.cat(out).reshape(q.shape[0], -1)


@pytest.mark.parametrize(
    "heads,kv_heads,d",
    [(9, 3, 64), (32, 8, 128), (4, 4, 80), (6, 2, 40)],
    ids=["smollm2", "llama8b", "generic-vector", "portable"],
)
@pytest.mark.parametrize("lengths", [[1], [31, 32, 33], [200, 5, 64, 97]], ids=str)
def test_decode_attention_matches_sdpa(heads, kv_heads, d, lengths, lib=None):
    lib = lib or kernels
    g = torch.Generator().manual_seed(len(lengths) * 1000 + d)
    slots = sum(lengths) + 50
    k_pool = torch.randn(slots, kv_heads * d, generator=g).to(torch.bfloat16)
    v_pool = torch.randn(slots, kv_heads * d, generator=g).to(torch.bfloat16)
    perm = torch.randperm(slots, generator=g)  # scattered rows, as pages end up in the pool
    idx = torch.zeros(len(lengths), max(lengths), dtype=torch.int64)
    start = 0
    for b, n in enumerate(lengths):
        idx[b, :n] = perm[start : start + n]
        start += n
    lens = torch.tensor(lengths, dtype=torch.int64)
    # q as a row-strided view of a wider buffer (the fused QKV output)
    qkv = (3 * torch.randn(len(lengths), (heads + 2 * kv_heads) * d, generator=g)).bfloat16()
    q = qkv[:, : heads * d]
    scale = d**-0.5
    out = lib.decode_attention(q, k_pool, v_pool, idx, lens, heads, kv_heads, scale)
    ref = _reference(q, k_pool, v_pool, idx, lens, heads, kv_heads, scale)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    # bf16 output: within 2 ulp of values of magnitude <= ~3
    assert (out.float() - ref).abs().max() <= 2e-2


RUNNABLE = [isa for isa in cpu_kernel_build.ISAS
            if isa.requires <= cpu_kernel_build.cpu_features()]


@pytest.mark.parametrize("isa", RUNNABLE, ids=[isa.name for isa in RUNNABLE])
def test_every_build_this_cpu_runs(isa):
    """Each build this CPU can run (on an AVX-512 machine: the AVX2 attention and the portable
    loops too) gives SDPA's attention and the loaded build's RMSNorm bit for bit."""
    lib = cpu_kernels.CpuKernels(cpu_kernel_build.build(isa))
    assert lib.compiled_for == isa.requires
    assert lib.gemm_supported == (isa.name != "portable")
    for heads, kv_heads, d in [(9, 3, 64), (6, 2, 40)]:
        test_decode_attention_matches_sdpa(heads, kv_heads, d, [40, 3], lib=lib)
    x, res = torch.randn(5, 96).bfloat16(), torch.randn(5, 96).bfloat16()
    w = (1 + 0.1 * torch.randn(96)).bfloat16()
    r1, r2 = res.clone(), res.clone()
    assert torch.equal(lib.add_rmsnorm(x, r1, w, 1e-5), kernels.add_rmsnorm(x, r2, w, 1e-5))
    assert torch.equal(r1, r2)


def test_store_kv_matches_index_copy():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(7, 20 * 16, generator=g).bfloat16()
    k, v = qkv[:, 8 * 16 : 14 * 16], qkv[:, 14 * 16 :]  # row-strided views, as in the model
    loc = torch.randperm(50, generator=g)[:7]
    pools = [torch.zeros(50, 6 * 16, dtype=torch.bfloat16) for _ in range(4)]
    kernels.store_kv(pools[0], pools[1], loc, k, v)
    pools[2].index_copy_(0, loc, k)
    pools[3].index_copy_(0, loc, v)
    assert torch.equal(pools[0], pools[2]) and torch.equal(pools[1], pools[3])
    assert pools[0].abs().sum() > 0


def test_argmax_matches_torch_with_ties():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(33, 49152, generator=g)
    x[3, 100] = x[3, 200] = x[3].max() + 1  # a tie: the first index wins, as in torch
    x[5] = 0.0
    rows = x[::2]  # row-strided
    assert torch.equal(kernels.argmax(rows), rows.argmax(-1))
    assert torch.equal(kernels.argmax(x), x.argmax(-1)) and kernels.argmax(x)[3] == 100


def test_decode_attention_rejects_what_it_cannot_take():
    pool = torch.zeros(4, 64, dtype=torch.bfloat16)
    idx, lens = torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="bfloat16"):
        kernels.decode_attention(torch.zeros(1, 64), pool, pool, idx, lens, 1, 1, 0.125)
    wide = torch.zeros(1, 17 * 64, dtype=torch.bfloat16)  # 17 query heads on one kv head
    with pytest.raises(ValueError, match="at most 16"):
        kernels.decode_attention(wide, pool, pool, idx, lens, 17, 1, 0.125)


@pytest.fixture(scope="module")
def smol_bf16(tmp_path_factory):
    return random_llama(dict(SMOLLM2_135M, num_hidden_layers=6)), tmp_path_factory.mktemp("bf16")


def _teacher_forced(runner, prompts, forced):
    """Logits [steps, B, vocab] of a chunked prefill then decode steps over a batch."""
    d = PagedDriver(runner, page_size=16)
    rows = []
    half = {r: len(p) // 2 for r, p in prompts.items()}
    d.extend([(r, p[: half[r]]) for r, p in prompts.items()])
    last = d.extend([(r, p[half[r] :]) for r, p in prompts.items()])
    rows.append(torch.stack([x[-1] for x in last]))
    for step in range(len(next(iter(forced.values())))):
        rows.append(d.decode([(r, f[step]) for r, f in forced.items()]))
    return torch.stack(rows)


def test_bf16_model_with_kernels_tracks_hf_like_torch_path(smol_bf16, monkeypatch):
    """Chunked prefill + 8 decode steps of 3 requests of different lengths: the kernel path is
    as close to float32 HF as the torch path is (mean |logit error|, about 0.03 on logits of
    mean magnitude 1; worst, about 0.2), and picks HF's greedy token up to that error."""
    hf, path = smol_bf16
    g = torch.Generator().manual_seed(1)
    prompts = {f"r{i}": torch.randint(0, 49152, (n,), generator=g).tolist()
               for i, n in enumerate([40, 7, 75])}
    forced = {r: torch.randint(0, 49152, (8,), generator=g).tolist() for r in prompts}
    ref = torch.stack([
        torch.stack([hf_logits(hf, prompts[r] + forced[r][:s])[-1] for r in prompts])
        for s in range(9)
    ])
    assert ref.abs().max() > 1.0
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(cpu_kernels, "_enabled", on)
        runner = save_and_load(hf, path / str(on), dtype="bfloat16")
        outs[on] = _teacher_forced(runner, prompts, forced)
        assert (runner.attn_backend.kernel is not None) == on
    err_kernel = (outs[True] - ref).abs().mean().item()
    err_torch = (outs[False] - ref).abs().mean().item()
    assert err_kernel <= 1.1 * err_torch, (err_kernel, err_torch)
    max_kernel, max_torch = ((outs[on] - ref).abs().max().item() for on in (True, False))
    assert max_kernel <= 2 * max_torch, (max_kernel, max_torch)
    # Random weights leave near-ties at the top, which bf16 noise may flip on either path: every
    # greedy pick of the kernel path must be a token HF ranks within what the torch path's own
    # worst error could explain (no count of flips: how many there are depends on the CPU).
    picked = ref.gather(-1, outs[True].argmax(-1, keepdim=True)).squeeze(-1)
    gap = (ref.max(-1).values - picked).max().item()
    assert gap <= 2 * max_torch, (gap, max_torch)
