"""A contiguous copy of the running decode batch's K/V, kept from one decode step to the next.

Gathering every request's whole context out of the paged pool, per layer and per step, moves
more bytes than the attention itself reads. The mirror keeps row ``i`` of the batch as
``[kv_heads, capacity, head_dim]`` per layer: a step that continues the previous one only appends
the new token, and rows that changed (a new request, a reshuffled batch) are re-gathered from the
pool. Row ``i`` counts as continued when its slots are the previous step's row ``i`` slots plus one,
and its last cached K of the last layer still matches the pool (a guard against slot reuse).
Any EXTEND pass drops the whole mirror. CPU only (the scheduler's memory, not the GPU's).
The mirror holds the compute dtype: rows of a pool that stores another (fp8) are widened once,
when they enter it, through the pool's ``KVCodec``.
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.mem_cache.kv_dtype import KVCodec


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class DecodeKVMirror:
    def __init__(
        self,
        pool_k: list[torch.Tensor],
        pool_v: list[torch.Tensor],
        num_kv_heads: int,
        head_dim: int,
        max_bytes: int,
        codec: Optional[KVCodec] = None,
    ):
        # per layer [slots, kv_heads * head_dim], in the codec's view dtype
        self.pool_k, self.pool_v = pool_k, pool_v
        self.codec = codec or KVCodec(pool_k[0].dtype, pool_k[0].dtype)
        self.dtype = self.codec.compute_dtype
        self.kvh, self.d = num_kv_heads, head_dim
        self.max_bytes = max_bytes
        self.k: list[torch.Tensor] = []  # per layer [rows_cap, kv_heads, len_cap, head_dim]
        self.v: list[torch.Tensor] = []
        self.prev: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (idx [B, L], lens [B])
        self._pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self._rows = self._pos = self._bad = self._bad_idx = None
        self._b = self._l = 0

    def invalidate(self) -> None:
        self.prev = None

    def _ensure_capacity(self, b: int, seq: int) -> bool:
        rows_cap, len_cap = (self.k[0].shape[0], self.k[0].shape[2]) if self.k else (0, 0)
        if b <= rows_cap and seq <= len_cap:
            return True
        new_rows, new_len = max(rows_cap, _round_up(b, 8)), max(len_cap, _round_up(seq + 32, 128))
        ref = self.pool_k[0]
        elem = torch.empty((), dtype=self.dtype).element_size()
        nbytes = 2 * len(self.pool_k) * new_rows * new_len * self.kvh * self.d * elem
        if nbytes > self.max_bytes:
            self.k, self.v, self.prev = [], [], None
            return False
        shape = (new_rows, self.kvh, new_len, self.d)
        # zeros, not empty: masked-out positions still enter softmax(.) @ V as 0 * value.
        for lst in (self.k, self.v):
            for i in range(len(self.pool_k)):
                new = torch.zeros(shape, dtype=self.dtype, device=ref.device)
                if i < len(lst):
                    new[:rows_cap, :, :len_cap] = lst[i]
                    lst[i] = new
                else:
                    lst.append(new)
        return True

    def prepare(self, idx: torch.Tensor, lens: torch.Tensor) -> bool:
        """Once per DECODE pass: ``idx`` [B, L] padded slots, ``lens`` [B]. False: not usable
        (over the memory budget); use the plain gather then."""
        prev, self.prev = self.prev, None  # committed again once the last layer has run
        b, seq = idx.shape
        if not self._ensure_capacity(b, seq):
            return False
        valid = torch.zeros(b, dtype=torch.bool, device=idx.device)
        if prev is not None:
            p_idx, p_lens = prev
            n = min(b, p_idx.shape[0])
            cols = min(seq, p_idx.shape[1])
            same = lens[:n] == p_lens[:n] + 1
            beyond = torch.arange(cols, device=idx.device)[None, :] >= p_lens[:n, None]
            same &= ((idx[:n, :cols] == p_idx[:n, :cols]) | beyond).all(dim=1)
            # Content guard: the last layer's K of each row's previous last token.
            last = (p_lens[:n] - 1).clamp(min=0)
            slot = p_idx[:n].gather(1, last[:, None]).squeeze(1)
            cached = self.k[-1][torch.arange(n, device=idx.device), :, last].flatten(1)
            same &= (cached == self.codec.decode(self.pool_k[-1][slot])).all(dim=1)
            valid[:n] = same
        bad = (~valid).nonzero().squeeze(1)
        self._bad = bad if bad.numel() else None
        self._bad_idx = idx[bad].reshape(-1) if bad.numel() else None
        self._rows = torch.arange(b, device=idx.device)
        self._pos = lens - 1
        self._b, self._l = b, seq
        self._pending = (idx, lens)
        return True

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Append this step's K/V [B, kv_heads * head_dim] as stored in the pool (the pool view's
        dtype), re-gather the rows that changed; returns K, V views [B, kv_heads, L, head_dim]."""
        b, seq, kvh, d = self._b, self._l, self.kvh, self.d
        mk, mv = self.k[layer], self.v[layer]
        dec = self.codec.decode
        mk[self._rows, :, self._pos] = dec(k_new).reshape(b, kvh, d).to(mk.dtype)
        mv[self._rows, :, self._pos] = dec(v_new).reshape(b, kvh, d).to(mv.dtype)
        if self._bad is not None:
            nb = self._bad.shape[0]
            gk = dec(self.pool_k[layer].index_select(0, self._bad_idx)).view(nb, seq, kvh, d)
            gv = dec(self.pool_v[layer].index_select(0, self._bad_idx)).view(nb, seq, kvh, d)
            mk[:, :, :seq][self._bad] = gk.transpose(1, 2)
            mv[:, :, :seq][self._bad] = gv.transpose(1, 2)
        if layer == len(self.pool_k) - 1:
            self.prev = self._pending
        return mk[:b, :, :seq], mv[:b, :, :seq]
