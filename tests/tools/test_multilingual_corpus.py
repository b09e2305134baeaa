"""The seeded multilingual corpus behind the ``tiny-multilingual`` preset (no training here;
its trained output is checked by tests/server/test_streaming_text.py)."""

from __future__ import annotations

from sglang.tools.create_model import model_config
from sglang.tools.model_factory.corpus import (
    load_corpus,
    multilingual_corpus,
    multilingual_prompts,
)
from sglang.tools.model_factory.tokenizer import train_tokenizer


def test_same_seed_same_corpus_other_seed_other_corpus():
    assert multilingual_corpus() == load_corpus("multilingual") == multilingual_corpus()
    assert multilingual_corpus(1) != multilingual_corpus(2)


def test_its_characters_are_split_over_byte_level_tokens():
    tok = train_tokenizer()
    text = multilingual_corpus()
    multibyte = {ch for ch in text if len(ch.encode()) > 1}
    assert len(multibyte) > 50
    # The tokenizer is trained on the English corpus: no CJK or emoji character is one token.
    split = [ch for ch in multibyte if len(tok.encode(ch).ids) > 1]
    assert any(ord(ch) > 0xFFFF for ch in split) and any(0x4E00 <= ord(ch) < 0xA000 for ch in split)
    assert tok.decode(tok.encode(text).ids) == text


def test_prompts_open_its_paragraphs():
    paras = multilingual_corpus().split("\n\n")
    for p, para in zip(multilingual_prompts(), paras):
        assert para.startswith(p) and len(p) < len(para)


def test_the_preset_is_the_tiny_llama_shape():
    assert model_config("tiny-multilingual") == model_config("tiny")
