"""Paged-KV attention with ``torch.nn.functional.scaled_dot_product_attention`` (CPU and CUDA).

Every layer first writes the new tokens' K/V into the pool at ``out_cache_loc``, then attends
over each request's ``kv_indices``. Decode in bf16 on CPU reads the pages in place with the C
kernel of ``cpu_kernels``; otherwise SDPA runs on gathered (or mirrored) K/V. What is derived
from the batch (padded decode indices, masks, per-request slices) is built once per forward pass
and kept in ``fb.attn_cache``. A pool that stores another dtype than the model computes in
(``--kv-cache-dtype``, e.g. fp8) is written and read through a ``KVCodec``: values are cast on
store and widened to the compute dtype on every read (the new tokens of an EXTEND attend to
their own unrounded K/V, as SGLang's kernels do).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from sglang.srt.base_types import ForwardMode
from sglang.srt.layers import cpu_kernels
from sglang.srt.layers.decode_kv_mirror import DecodeKVMirror
from sglang.srt.layers.forward_batch import ForwardBatch
from sglang.srt.mem_cache.kv_dtype import KVCodec
from sglang.srt.mem_cache.memory_pool import KVPool


@dataclass
class _DecodeMeta:
    loc: torch.Tensor  # [B] slots of the new tokens
    idx: torch.Tensor  # [B, L] slots, padded per request to L = max seq len
    lens: torch.Tensor  # [B] int64
    mask: Optional[torch.Tensor]  # [B, 1, 1, L] additive (None when all lengths are equal)
    max_len: int
    use_mirror: bool  # K/V come from the DecodeKVMirror; else gathered into k_buf/v_buf
    k_buf: Optional[torch.Tensor]  # [B * L, kv_heads * head_dim], reused by every layer
    v_buf: Optional[torch.Tensor]


@dataclass
class _ExtendSeq:
    """One request, or a run of consecutive prefix-less requests of equal length (one call)."""

    start: int
    count: int  # requests in the run
    n: int  # new tokens of each
    kv_idx: Optional[torch.Tensor]  # [seq_len] slots; None when there is no prefix
    mask: Optional[torch.Tensor]  # [extend_len, seq_len] bool; None: causal on new tokens


@dataclass
class _ExtendMeta:
    loc: torch.Tensor
    seqs: list[_ExtendSeq]


class TorchAttnBackend:
    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.group = num_heads // num_kv_heads
        self.scaling = scaling
        self.pool: Optional[KVPool] = None
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self.mirror: Optional[DecodeKVMirror] = None
        self.kernel: Optional[cpu_kernels.CpuKernels] = None
        self.codec: Optional[KVCodec] = None

    def set_kv_pool(self, pool: KVPool, compute_dtype: Optional[torch.dtype] = None) -> None:
        """``compute_dtype``: the model's (default: the pool's storage dtype)."""
        lay = pool.layout
        if (lay.num_kv_heads, lay.head_dim) != (self.num_kv_heads, self.head_dim):
            raise ValueError(
                f"KV pool has {lay.num_kv_heads} kv heads x {lay.head_dim}, the model needs "
                f"{self.num_kv_heads} x {self.head_dim}"
            )
        self.pool = pool
        codec = self.codec = KVCodec(pool.dtype, compute_dtype or pool.dtype)
        # 2-D views [slots, kv_heads * head_dim]: row gathers/scatters are much faster on them
        # (uint8 views of an fp8 pool: torch's CPU index ops take no float8).
        self._k = [codec.view(pool.k_buffer(i).view(pool.size, -1)) for i in range(pool.num_layers)]
        self._v = [codec.view(pool.v_buffer(i).view(pool.size, -1)) for i in range(pool.num_layers)]
        self.mirror = None
        # bf16 on CPU: decode attention reads the pool in place (no gather, no mirror).
        self.kernel = None
        if (
            codec.identity
            and self.group <= cpu_kernels.MAX_GROUP
            and self.head_dim <= cpu_kernels.MAX_HEAD_DIM
        ):
            self.kernel = cpu_kernels.usable(self._k[0])
        if pool.device.type == "cpu" and self.kernel is None:
            budget = min(2 << 30, max(512 << 20, pool.total_bytes() // 4))
            self.mirror = DecodeKVMirror(
                self._k, self._v, lay.num_kv_heads, lay.head_dim, budget, codec
            )

    # ---- per-forward metadata ----------------------------------------------------------------
    def _decode_meta(self, fb: ForwardBatch, device: torch.device, dtype) -> _DecodeMeta:
        meta = fb.attn_cache.get("decode")
        if meta is None:
            idx = pad_sequence(list(fb.kv_indices), batch_first=True, padding_value=0)
            idx = idx.to(device=device, dtype=torch.int64, non_blocking=True)
            max_len = idx.shape[1]
            lens = torch.tensor(fb.seq_lens, dtype=torch.int64).to(device, non_blocking=True)
            mask = None
            if self.kernel is None and min(fb.seq_lens) != max_len:
                pad = torch.arange(max_len, device=device)[None, :] >= lens[:, None]
                mask = torch.zeros(pad.shape, dtype=dtype, device=device)
                mask = mask.masked_fill_(pad, float("-inf")).view(len(fb.seq_lens), 1, 1, max_len)
            loc = fb.out_cache_loc.to(device=device, dtype=torch.int64, non_blocking=True)
            use_mirror = (
                self.kernel is None and self.mirror is not None and self.mirror.prepare(idx, lens)
            )
            k_buf = v_buf = None
            if self.kernel is None and not use_mirror:
                buf = self._k[0].new_empty((2, idx.numel(), self._k[0].shape[1]))
                k_buf, v_buf = buf[0], buf[1]
            meta = _DecodeMeta(loc, idx, lens, mask, max_len, use_mirror, k_buf, v_buf)
            fb.attn_cache["decode"] = meta
        return meta

    def _extend_meta(self, fb: ForwardBatch, device: torch.device) -> _ExtendMeta:
        meta = fb.attn_cache.get("extend")
        if meta is None:
            seqs, start = [], 0
            for seq_len, ext, kv in zip(fb.seq_lens, fb.extend_lens, fb.kv_indices):
                prefix = seq_len - ext
                kv_idx = mask = None
                if prefix > 0:
                    kv_idx = kv.to(device=device, dtype=torch.int64, non_blocking=True)
                    if ext > 1:
                        q_pos = torch.arange(prefix, seq_len, device=device)
                        mask = torch.arange(seq_len, device=device)[None, :] <= q_pos[:, None]
                last = seqs[-1] if seqs else None
                if kv_idx is None and last is not None and last.kv_idx is None and last.n == ext:
                    last.count += 1
                else:
                    seqs.append(_ExtendSeq(start, 1, ext, kv_idx, mask))
                start += ext
            loc = fb.out_cache_loc.to(device=device, dtype=torch.int64, non_blocking=True)
            meta = _ExtendMeta(loc, seqs)
            fb.attn_cache["extend"] = meta
        return meta

    # ---- attention ---------------------------------------------------------------------------
    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int, fb: ForwardBatch
    ) -> torch.Tensor:
        """q [T, heads*head_dim], k/v [T, kv_heads*head_dim] (rows may be strided views).
        Returns [T, heads*head_dim]."""
        if self.pool is None:
            raise RuntimeError("no KV pool: call set_kv_pool first")
        kbuf, vbuf = self._k[layer], self._v[layer]
        if fb.mode == ForwardMode.DECODE:
            meta = self._decode_meta(fb, q.device, q.dtype)
            k, v = self._store(kbuf, vbuf, meta.loc, k, v)
            if self.kernel is not None:
                return self.kernel.decode_attention(
                    q, kbuf, vbuf, meta.idx, meta.lens, self.num_heads, self.num_kv_heads,
                    self.scaling,
                )
            if meta.use_mirror:
                kc, vc = self.mirror.update(layer, k, v)
            else:
                kc, vc = self._gather(kbuf, vbuf, meta)
            return self._decode(q, kc, vc, meta)
        if self.mirror is not None:
            self.mirror.invalidate()  # an EXTEND may reuse slots the mirror holds
        meta = self._extend_meta(fb, q.device)
        self._store(kbuf, vbuf, meta.loc, k, v)
        return self._extend(q, k, v, kbuf, vbuf, meta)

    def _store(self, kbuf: torch.Tensor, vbuf: torch.Tensor, loc: torch.Tensor, k, v):
        """Writes K/V into the pool; returns them as stored (in the pool view's dtype)."""
        if self.kernel is not None and k.dtype == kbuf.dtype:
            self.kernel.store_kv(kbuf, vbuf, loc, k, v)
            return k, v
        k, v = self.codec.encode(k), self.codec.encode(v)
        kbuf.index_copy_(0, loc, k)
        vbuf.index_copy_(0, loc, v)
        return k, v

    def _gather(self, kbuf, vbuf, meta: _DecodeMeta) -> tuple[torch.Tensor, torch.Tensor]:
        b, kvh, d = meta.loc.shape[0], self.num_kv_heads, self.head_dim
        torch.index_select(kbuf, 0, meta.idx.view(-1), out=meta.k_buf)
        torch.index_select(vbuf, 0, meta.idx.view(-1), out=meta.v_buf)
        k = self.codec.decode(meta.k_buf).view(b, meta.max_len, kvh, d).transpose(1, 2)
        v = self.codec.decode(meta.v_buf).view(b, meta.max_len, kvh, d).transpose(1, 2)
        return k, v

    def _decode(self, q: torch.Tensor, k, v, meta: _DecodeMeta) -> torch.Tensor:
        """q [B, heads*head_dim]; k, v [B, kv_heads, L, head_dim]."""
        b, d = q.shape[0], self.head_dim
        if k.dtype != q.dtype:
            k, v = k.to(q.dtype), v.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q.view(b, self.num_heads, 1, d),
            k,
            v,
            attn_mask=meta.mask,
            scale=self.scaling,
            enable_gqa=self.group > 1,
        )
        return out.reshape(b, self.num_heads * d)

    def _extend(self, q, k, v, kbuf, vbuf, meta: _ExtendMeta) -> torch.Tensor:
        h, kvh, d = self.num_heads, self.num_kv_heads, self.head_dim
        gqa = self.group > 1
        outs = []
        for s in meta.seqs:
            # 4-D [requests, heads, tokens, head_dim]: the CPU flash kernel needs 4-D (3-D falls
            # back to the slow math path).
            c, n, end = s.count, s.n, s.start + s.count * s.n
            qi = q[s.start : end].view(c, n, h, d).transpose(1, 2)
            if s.kv_idx is None:
                ki = k[s.start : end].view(c, n, kvh, d).transpose(1, 2)
                vi = v[s.start : end].view(c, n, kvh, d).transpose(1, 2)
            else:
                seq_len = s.kv_idx.shape[0]
                ki = self.codec.decode(kbuf.index_select(0, s.kv_idx))
                vi = self.codec.decode(vbuf.index_select(0, s.kv_idx))
                ki = ki.view(1, seq_len, kvh, d).transpose(1, 2)
                vi = vi.view(1, seq_len, kvh, d).transpose(1, 2)
                if ki.dtype != qi.dtype:
                    ki, vi = ki.to(qi.dtype), vi.to(qi.dtype)
            o = F.scaled_dot_product_attention(
                qi,
                ki,
                vi,
                attn_mask=s.mask,
                is_causal=s.kv_idx is None and n > 1,
                scale=self.scaling,
                enable_gqa=gqa,
            )
            outs.append(o.transpose(1, 2).reshape(c * n, h * d))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)
