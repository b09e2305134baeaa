"""Byte-level BPE tokenizer trained on the built-in corpus, saved in HF fast-tokenizer layout."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sglang.tools.model_factory.corpus import load_corpus, split_corpus

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2
TRAINED_VOCAB_SIZE = 2048  # an upper bound: min_frequency=2 stops the merges earlier
FILLER_FORMAT = "<filler_{:06d}>"

# ChatML. Accepts string content or OpenAI-style lists of {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


@dataclass(frozen=True)
class SpecialIds:
    endoftext: int
    im_start: int
    im_end: int


def render_chat(messages: list[tuple[str, str]]) -> str:
    """Python twin of CHAT_TEMPLATE for plain-string content (used to build training text)."""
    return "".join(f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in messages)


def train_tokenizer() -> Tokenizer:
    """Deterministic byte-level BPE (GPT-2 style pre-tokenization) with ChatML special tokens."""
    prose, chats = split_corpus(load_corpus())
    texts = prose + ["\n".join(f"{r}\n{c}" for r, c in chat) for chat in chats]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def special_ids(tok: Tokenizer) -> SpecialIds:
    ids = [tok.token_to_id(t) for t in SPECIAL_TOKENS]
    assert None not in ids, ids
    return SpecialIds(*ids)  # type: ignore[arg-type]


def _padded_tokenizer_json(tok: Tokenizer, vocab_size: int) -> str:
    """tokenizer.json text, with unreachable filler entries appended to the BPE vocab.

    Fillers are never produced by encoding (no merge builds them) but every id the model can
    emit then decodes: ByteLevel maps their printable-ASCII characters back to themselves.
    """
    data = json.loads(tok.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    n = tok.get_vocab_size()
    if vocab_size < n:
        raise ValueError(f"model vocab {vocab_size} is smaller than the tokenizer's {n}")
    for i in range(n, vocab_size):
        vocab[FILLER_FORMAT.format(i)] = i
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def save_tokenizer(tok: Tokenizer, out: Path, vocab_size: int, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    ids = special_ids(tok)
    (out / "tokenizer.json").write_text(_padded_tokenizer_json(tok, vocab_size), encoding="utf-8")
    added: dict[str, Any] = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in zip(SPECIAL_TOKENS, (ids.endoftext, ids.im_start, ids.im_end))
    }
    tok_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": ENDOFTEXT,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": model_max_length,
        "split_special_tokens": False,
    }
    _write_json(out / "tokenizer_config.json", tok_config)
    special_map = {
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": ENDOFTEXT,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
    }
    _write_json(out / "special_tokens_map.json", special_map)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
