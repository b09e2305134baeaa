"""Shared helpers of the model-executor tests: tiny HF models saved to disk, and a paged-KV driver
that builds ForwardBatches the way a scheduler would (non-contiguous pages on purpose)."""

from __future__ import annotations

import random
from typing import Any

import torch

from sglang.srt.mem_cache.memory_pool import KVPool
from sglang.srt.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglang.srt.model_executor.model_config import ModelConfig
from sglang.srt.model_executor.model_runner import ModelRunner

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=1,
    eos_token_id=2,
)


def build_hf_model(arch: str, **overrides: Any):
    """A randomly initialised float32 HF model of family ``arch`` (llama/mistral/qwen2/qwen3)."""
    import transformers as tf

    cfg_cls, model_cls = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
        "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
    }[arch]
    kw = dict(TINY)
    if arch == "qwen3":
        kw["head_dim"] = 32  # q size 128 != hidden 64: exercises an explicit head_dim
    if arch == "mistral":
        kw["sliding_window"] = None
    if arch == "llama":
        kw["rope_theta"] = 500000.0
    kw.update(overrides)
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kw)).float().eval()
    with torch.no_grad():  # larger than HF's init so that logits differ clearly between tokens
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.1 if p.dim() == 1 else 0.08)
    return model


def random_llama(config: dict[str, Any]):
    """A float32 HF Llama with seeded random weights (norm weights around 1)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.05)
    return model


@torch.no_grad()
def hf_logits(model, tokens: list[int]) -> torch.Tensor:
    """Teacher-forced float32 logits [len(tokens), vocab]."""
    return model(torch.tensor([tokens])).logits[0].float()


class PagedDriver:
    """Owns a KV pool, hands out pages in shuffled order and builds EXTEND/DECODE batches."""

    def __init__(
        self, runner: ModelRunner, page_size: int, num_pages: int | None = None, seed: int = 0
    ):
        self.runner = runner
        self.ps = page_size
        num_pages = num_pages or max(64, 1024 // page_size)
        self.pool = KVPool(runner.kv_layout(page_size), num_pages, device=runner.device)
        runner.set_kv_pool(self.pool)
        self.free = list(range(num_pages))
        random.Random(seed).shuffle(self.free)
        self.slots: dict[str, list[int]] = {}

    def _grow(self, rid: str, n: int) -> list[int]:
        slots = self.slots.setdefault(rid, [])
        new = []
        for _ in range(n):
            t = len(slots)
            page = self.free.pop() if t % self.ps == 0 else slots[-1] // self.ps
            slots.append(page * self.ps + t % self.ps)
            new.append(slots[-1])
        return new

    def share_prefix(self, src: str, dst: str, n: int) -> None:
        """``dst`` starts with the KV of ``src``'s first ``n`` tokens (a prefix-cache hit)."""
        assert n % self.ps == 0, "shared prefixes are whole pages"
        self.slots[dst] = list(self.slots[src][:n])

    def _batch(self, mode: ForwardMode, reqs: list[tuple[str, list[int]]], all_rows: bool):
        dev = self.runner.device
        ids, pos, loc, seq_lens, ext_lens, kv = [], [], [], [], [], []
        for rid, toks in reqs:
            prefix = len(self.slots.get(rid, []))
            loc += self._grow(rid, len(toks))
            ids += toks
            pos += range(prefix, prefix + len(toks))
            seq_lens.append(prefix + len(toks))
            ext_lens.append(len(toks))
            kv.append(torch.tensor(self.slots[rid], dtype=torch.int64, device=dev))
        t = lambda x: torch.tensor(x, dtype=torch.int64, device=dev)  # noqa: E731
        rows = t(list(range(len(ids)))) if all_rows else None
        return ForwardBatch(mode, t(ids), t(pos), t(loc), seq_lens, ext_lens, kv, rows)

    def extend(self, reqs: list[tuple[str, list[int]]]) -> list[torch.Tensor]:
        """Logits of every new token, per request."""
        fb = self._batch(ForwardMode.EXTEND, reqs, all_rows=True)
        logits = self.runner.forward(fb)
        return list(logits.split(fb.extend_lens))

    def decode(self, reqs: list[tuple[str, int]]) -> torch.Tensor:
        fb = self._batch(ForwardMode.DECODE, [(r, [tok]) for r, tok in reqs], all_rows=False)
        self.last_fb = fb
        return self.runner.forward(fb)


def save_and_load(
    model, path, device: str = "cpu", dtype: str = "auto", **save_kw: Any
) -> ModelRunner:
    model.save_pretrained(path, **save_kw)
    return ModelRunner(ModelConfig.from_pretrained(str(path), dtype=dtype), device=device)


def rand_tokens(n: int, seed: int, vocab: int = TINY["vocab_size"]) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().cpu() - b.float().cpu()).abs().max().item()
