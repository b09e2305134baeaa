"""A model runner without a model, for in-process scheduler tests.

It writes each new token's id into the K cache (layer 0, head 0, dim 0) at the token's slot and
its position into V, and picks the next token from the token, its position and the K of the
previous position read back from the pool. So the output depends on the KV pages: a decode
server whose transferred pages are wrong (or were overwritten) answers differently from a
unified server. Greedy logits: one large value, the rest zero.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang.srt.mem_cache.memory_pool import KVLayout, KVPool
from sglang.srt.base_types import ForwardMode
from sglang.srt.layers.forward_batch import ForwardBatch


class StubRunner:
    def __init__(self, vocab_size: int = 61, eos_token_id: int = 60, context_length: int = 256,
                 num_layers: int = 2, num_kv_heads: int = 1, head_dim: int = 2):
        self.config = SimpleNamespace(
            context_length=context_length, eos_token_ids={eos_token_id}, vocab_size=vocab_size,
            architecture="StubForCausalLM", torch_dtype=torch.float32,
        )
        self.shape = (num_layers, num_kv_heads, head_dim)
        self.attn_backend = SimpleNamespace(kernel=None)
        self.pool: KVPool | None = None

    def kv_layout(self, page_size: int, kv_cache_dtype: str = "auto") -> KVLayout:
        return KVLayout(*self.shape, page_size, torch.float32)

    def set_kv_pool(self, pool: KVPool) -> None:
        self.pool = pool

    @staticmethod
    def next_token(tok: int, pos: int, prev_tok: int, vocab: int) -> int:
        return (3 * tok + 5 * prev_tok + pos + 1) % vocab

    def forward(self, fb: ForwardBatch) -> torch.Tensor:
        assert self.pool is not None
        k, v = self.pool.k_buffer(0), self.pool.v_buffer(0)
        k[fb.out_cache_loc, 0, 0] = fb.input_ids.to(torch.float32)
        v[fb.out_cache_loc, 0, 0] = fb.positions.to(torch.float32)
        if fb.logits_indices is not None:
            rows = fb.logits_indices.tolist()
        elif fb.mode == ForwardMode.DECODE:
            rows = list(range(len(fb.seq_lens)))
        else:
            rows = fb.last_token_rows().tolist()
        owner, starts, acc = [], [], 0
        for i, n in enumerate(fb.extend_lens):
            owner += [i] * n
            starts.append(acc)
            acc += n
        vocab = self.config.vocab_size
        logits = torch.zeros(len(rows), vocab)
        for j, r in enumerate(rows):
            i = owner[r]
            pos = int(fb.positions[r])
            prev = int(k[fb.kv_indices[i][pos - 1], 0, 0]) if pos > 0 else 0
            logits[j, self.next_token(int(fb.input_ids[r]), pos, prev, vocab)] = 30.0
        return logits
