"""``--kv-cache-dtype`` in the pool and the attention read paths (pure logic, no server).

The pool stores fp8 bytes (element size 1, half the bytes of bf16 per token and per page), the
memory sizing therefore fits twice the tokens, values out of range saturate instead of turning
into NaN, and every attention path (EXTEND over a prefix, DECODE through the mirror or through
a plain gather) computes on exactly the dequantized pool contents: equal, within float32
rounding, to attention over ``pool.get_kv`` done by hand.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sglang.srt.disaggregation.common.handshake import compat_problem
from sglang.srt.layers.attention_backend import TorchAttnBackend
from sglang.srt.mem_cache import pool_sizing
from sglang.srt.mem_cache.kv_dtype import KVCodec, kv_dtype_name, resolve_kv_cache_dtype
from sglang.srt.mem_cache.memory_pool import KVLayout, KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode

SMOL_SHAPE = dict(num_layers=30, num_kv_heads=3, head_dim=64)  # SmolLM2-135M's KV shape
FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def test_names_resolve_as_sglang_spells_them():
    assert resolve_kv_cache_dtype("auto", torch.float32) is torch.float32
    assert resolve_kv_cache_dtype("bf16", torch.float32) is torch.bfloat16
    assert resolve_kv_cache_dtype("float16", torch.bfloat16) is torch.float16
    assert resolve_kv_cache_dtype("fp8_e5m2", torch.bfloat16) is torch.float8_e5m2
    assert kv_dtype_name(torch.float8_e4m3fn) == "fp8_e4m3"
    assert kv_dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="--kv-cache-dtype must be one of"):
        resolve_kv_cache_dtype("int4", torch.bfloat16)


@pytest.mark.parametrize("name", sorted(FP8))
def test_pool_stores_fp8_bytes(name):
    bf16 = KVPool(KVLayout(**SMOL_SHAPE, page_size=16, dtype=torch.bfloat16), 4)
    fp8 = KVPool(KVLayout(**SMOL_SHAPE, page_size=16, dtype=FP8[name]), 4)
    assert fp8.buffer.dtype == FP8[name] and fp8.buffer.element_size() == 1
    assert fp8.dtype_name == name
    assert 2 * fp8.layout.bytes_per_token == bf16.layout.bytes_per_token == 2 * 2 * 30 * 3 * 64
    assert 2 * fp8.item_len == bf16.item_len  # what the transfer engine moves per page
    assert 2 * fp8.total_bytes() == bf16.total_bytes()

    g = torch.Generator().manual_seed(0)
    k = torch.randn(5, 3, 64, generator=g, dtype=torch.float32) * 4
    v = torch.randn(5, 3, 64, generator=g, dtype=torch.float32)
    k[0, 0, 0], v[0, 0, 1] = 1e6, -1e6  # beyond both formats' range
    loc = torch.tensor([3, 17, 18, 40, 63])
    codec = KVCodec(fp8.dtype, k.dtype)  # how the attention backend writes the pool
    codec.view(fp8.k_buffer(2))[loc] = codec.encode(k)
    codec.view(fp8.v_buffer(2))[loc] = codec.encode(v)
    kk, vv = fp8.get_kv(2, loc, torch.float32)
    top = torch.finfo(FP8[name]).max
    assert torch.isfinite(kk).all() and torch.isfinite(vv).all()
    assert kk[0, 0, 0] == top and vv[0, 0, 1] == -top  # saturated, not NaN
    k[0, 0, 0], v[0, 0, 1] = top, -top
    assert torch.equal(kk, k.to(FP8[name]).to(torch.float32))
    assert torch.equal(vv, v.to(FP8[name]).to(torch.float32))
    assert not torch.equal(kk, k)  # really rounded to 8 bits
    # the raw bytes are fp8 codes: one byte per element
    raw = fp8.buffer[0, 2].reshape(-1, 3, 64)[loc].view(torch.uint8)
    assert torch.equal(raw, k.to(FP8[name]).view(torch.uint8))


def test_sizing_from_memory_fraction_fits_twice_the_tokens(monkeypatch):
    monkeypatch.setattr(pool_sizing.psutil, "virtual_memory",
                        lambda: SimpleNamespace(available=1 << 30))
    pages = {}
    for name, dtype in [("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)]:
        bpt = KVLayout(**SMOL_SHAPE, page_size=16, dtype=dtype).bytes_per_token
        pages[name] = pool_sizing.kv_pool_pages(bpt, 16, "cpu", None, 0.01)
    print(f"\n1 GiB x 0.01 on the SmolLM2 shape: bf16 {pages['bf16'] * 16} tokens, "
          f"fp8 {pages['fp8_e4m3'] * 16} tokens")
    assert pages["bf16"] > 0
    assert pages["fp8_e4m3"] in (2 * pages["bf16"], 2 * pages["bf16"] + 1)


def test_handshake_names_both_kv_dtypes():
    def info(dtype):
        pool = KVPool(KVLayout(**SMOL_SHAPE, page_size=16, dtype=dtype), 2)
        return {"backend": "mooncake", "page_size": 16, "kv_dtype": pool.dtype_name,
                "model_shape": dict(SMOL_SHAPE), "kv_item_len": pool.item_len,
                "num_kv_regions": 60}

    assert compat_problem(info(torch.float8_e4m3fn), info(torch.float8_e4m3fn)) is None
    assert compat_problem(info(torch.float8_e4m3fn), info(torch.bfloat16)) == (
        "KV cache dtype differs: prefill fp8_e4m3, decode bfloat16; start both with the same "
        "--kv-cache-dtype (auto follows --dtype)"
    )


# ---- attention reads exactly the dequantized pool ------------------------------------------
H, KVH, D = 4, 2, 32


def _reference(q, k, v, n_new):
    """Causal attention of the last ``n_new`` positions of a sequence over K/V [L, KVH, D]."""
    k, v = (t.transpose(0, 1).repeat_interleave(H // KVH, 0) for t in (k, v))  # [H, L, D]
    qh = q.view(-1, H, D).transpose(0, 1)
    seq = k.shape[1]
    pos = torch.arange(seq - n_new, seq)[:, None]
    mask = torch.arange(seq)[None, :] <= pos
    out = F.scaled_dot_product_attention(qh, k, v, attn_mask=mask, scale=D**-0.5)
    return out.transpose(0, 1).reshape(-1, H * D)


def _batch(mode, reqs, slots):
    loc, seq_lens, ext, kv = [], [], [], []
    for rid, n in reqs:
        loc += slots[rid][len(slots[rid]) - n:]
        seq_lens.append(len(slots[rid]))
        ext.append(n)
        kv.append(torch.tensor(slots[rid]))
    t = len(loc)
    return ForwardBatch(mode, torch.zeros(t, dtype=torch.long), torch.zeros(t, dtype=torch.long),
                        torch.tensor(loc), seq_lens, ext, kv)


@pytest.mark.parametrize("path", ["mirror", "gather"])
@pytest.mark.parametrize("store", ["fp8_e4m3", "fp8_e5m2", "bf16"])
def test_attention_computes_on_the_dequantized_pool(store, path):
    dtype = torch.float32
    pool = KVPool(KVLayout(1, KVH, D, 4, resolve_kv_cache_dtype(store, dtype)), 32)
    be = TorchAttnBackend(H, KVH, D, D**-0.5)
    be.set_kv_pool(pool, dtype)
    assert be.kernel is None and (be.mirror is not None)
    if path == "gather":
        be.mirror = None
    g = torch.Generator().manual_seed(1)
    free = torch.randperm(32 * 4, generator=g).tolist()  # scattered slots
    slots = {"a": [], "b": []}

    def step(mode, reqs):
        for rid, n in reqs:
            slots[rid] += [free.pop() for _ in range(n)]
        fb = _batch(mode, reqs, slots)
        t = sum(n for _, n in reqs)
        q = torch.randn(t, H * D, generator=g) * 2
        k = torch.randn(t, KVH * D, generator=g) * 2
        v = torch.randn(t, KVH * D, generator=g)
        out = be.forward(q, k, v, 0, fb)
        start = 0
        for rid, n in reqs:
            if len(slots[rid]) == n:  # no prefix: its own K/V as computed
                kr = k[start:start + n].view(n, KVH, D)
                vr = v[start:start + n].view(n, KVH, D)
            else:
                kr, vr = pool.get_kv(0, torch.tensor(slots[rid]), dtype)
            ref = _reference(q[start:start + n], kr, vr, n)
            assert (out[start:start + n] - ref).abs().max().item() <= 1e-5, (mode, rid)
            start += n
        return out

    # The first chunk attends to its own unrounded K/V (as SGLang's extend kernels); every later
    # read of the pool sees the stored values.
    # a's and b's prompts arrive in two chunks: the second reads the first from the pool
    step(ForwardMode.EXTEND, [("a", 9), ("b", 6)])
    step(ForwardMode.EXTEND, [("a", 5), ("b", 3)])
    for _ in range(4):  # decode steps of unequal lengths (padded, masked)
        step(ForwardMode.DECODE, [("a", 1), ("b", 1)])
