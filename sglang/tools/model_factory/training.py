"""Deterministic CPU training of the tiny presets on the built-in corpus."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from sglang.tools.model_factory.corpus import load_corpus, split_corpus
from sglang.tools.model_factory.tokenizer import ENDOFTEXT, render_chat

TRAIN_THREADS = 1  # one thread: reproducible reductions, and robust when cores are shared
# Steps alternate between many short windows (many text starts at position 0, which is where
# prompts sit) and a few long ones (RoPE distances up to 512 are seen; beyond that the model
# has never looked and degrades). Every step has the same number of tokens.
SEQ_LENS = (128, 512)
TOKENS_PER_STEP = 1024
STEPS = 200
PEAK_LR = 6e-3
WARMUP_STEPS = 10
MIN_LR_RATIO = 0.02
# Much larger than HF's 0.02: the tiny model then leaves the unigram plateau within ~30 steps
# instead of ~100, which is what makes memorising the corpus in seconds possible.
INIT_STD = 0.1
# Share of training windows that begin at a paragraph / conversation start; the rest begin
# anywhere. Prompts look like text starts, so the model must continue them with no context.
DOC_START_FRACTION = 0.85
# Conversations are short and few; weight their starts up against prose paragraph starts.
CHAT_START_WEIGHT = 3.0


@dataclass
class TokenStream:
    ids: torch.Tensor  # the whole corpus as one token stream
    doc_starts: torch.Tensor  # offsets of paragraph and conversation starts
    doc_weights: torch.Tensor  # sampling weight of each start


def build_stream(tok: Tokenizer, corpus: str = "builtin") -> TokenStream:
    """Prose paragraphs joined by blank lines (so greedy decoding runs on from one paragraph to
    the next), then the conversations in ChatML, each followed by ``<|endoftext|>``."""
    prose, chats = split_corpus(load_corpus(corpus))
    ids: list[int] = []
    starts: list[int] = []
    for para in prose:
        starts.append(len(ids))
        ids += tok.encode(para + "\n\n").ids
    ids += tok.encode(ENDOFTEXT).ids
    for chat in chats:
        starts.append(len(ids))
        ids += tok.encode(render_chat(chat) + ENDOFTEXT).ids
    weights = [1.0] * len(prose) + [CHAT_START_WEIGHT] * len(chats)
    return TokenStream(torch.tensor(ids), torch.tensor(starts), torch.tensor(weights))


def sample_batch(stream: TokenStream, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """``TOKENS_PER_STEP // seq_len`` windows of ``seq_len + 1`` tokens (the stream wraps)."""
    n = stream.ids.numel()
    batch_size = TOKENS_PER_STEP // seq_len
    cyclic = torch.cat([stream.ids] * (2 + seq_len // n))
    uniform = torch.randint(0, n, (batch_size,), generator=gen)
    pick = torch.multinomial(stream.doc_weights, batch_size, replacement=True, generator=gen)
    at_doc = torch.rand(batch_size, generator=gen) < DOC_START_FRACTION
    begin = torch.where(at_doc, stream.doc_starts[pick], uniform)
    return cyclic[begin[:, None] + torch.arange(seq_len + 1)[None, :]]


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _lr(step: int) -> float:
    if step < WARMUP_STEPS:
        return PEAK_LR * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, STEPS - WARMUP_STEPS)
    return PEAK_LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    state: dict[str, torch.Tensor]  # float32, tied lm_head removed
    seconds: float
    final_loss: float


def train_model(
    config: dict[str, Any], tok: Tokenizer, seed: int, corpus: str = "builtin"
) -> TrainResult:
    """Train a fresh HF model described by ``config`` on ``corpus``, deterministically."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("model_type", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **fields, dtype=torch.float32)
    stream = build_stream(tok, corpus)

    t0 = time.perf_counter()
    with fixed_threads(TRAIN_THREADS), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                if param.dim() == 2:  # embeddings and projections; norms stay 1, biases 0
                    param.normal_(0.0, INIT_STD)
        model.train()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.0)
        loss = torch.zeros(())
        for step in range(STEPS):
            batch = sample_batch(stream, SEQ_LENS[step % len(SEQ_LENS)], gen)
            for group in opt.param_groups:
                group["lr"] = _lr(step)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    return TrainResult(state, time.perf_counter() - t0, float(loss.detach()))
