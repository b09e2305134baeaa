"""The training corpora: the built-in English text (``sglang/tools/data/corpus.txt``) and a
seeded random multilingual one."""

from __future__ import annotations

import random
from pathlib import Path

CORPUS_PATH = Path(__file__).resolve().parent.parent / "data" / "corpus.txt"

# Words for the multilingual corpus: CJK, Hangul, kana, emoji (4 bytes, some with modifiers),
# accented Latin, Cyrillic and Greek, mixed with English. The tokenizer is trained on the English
# corpus only, so every multi-byte character here is split over two to four byte-level tokens:
# exactly what a streaming detokenizer must put back together.
_MULTILINGUAL_WORDS = (
    "你好 世界 中文 北京 东京 日本語 漢字 こんにちは ありがとう カタカナ 한국어 안녕하세요 서울 "
    "😀 🎉 🚀 👍🏽 🌍 🍵 ❤️ café naïve über façade señor Ærø Łódź crème brûlée Øresund "
    "привет мир спасибо Αθήνα καλημέρα the a river cat sun and of in is"
).split()
MULTILINGUAL_SEED = 1234  # fixed: the corpus is data, the model's --seed only changes weights
MULTILINGUAL_PARAGRAPHS = 48
MULTILINGUAL_PARAGRAPH_WORDS = (8, 16)


def multilingual_corpus(seed: int = MULTILINGUAL_SEED) -> str:
    """Paragraphs of random words (blank-line separated), the same for the same seed."""
    rng = random.Random(seed)
    paras = []
    for _ in range(MULTILINGUAL_PARAGRAPHS):
        n = rng.randint(*MULTILINGUAL_PARAGRAPH_WORDS)
        paras.append(" ".join(rng.choice(_MULTILINGUAL_WORDS) for _ in range(n)))
    return "\n\n".join(paras) + "\n"


CORPORA = {
    "builtin": lambda: CORPUS_PATH.read_text(encoding="utf-8"),
    "multilingual": multilingual_corpus,
}


def load_corpus(name: str = "builtin") -> str:
    try:
        return CORPORA[name]()
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; choose from {sorted(CORPORA)}") from None


def split_corpus(text: str) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Split into prose paragraphs and chats.

    Paragraphs are separated by blank lines. A paragraph whose lines all start with ``User:`` or
    ``Assistant:`` is a conversation, returned as ``[(role, content), ...]``.
    """
    prose: list[str] = []
    chats: list[list[tuple[str, str]]] = []
    for para in text.split("\n\n"):
        para = para.strip()
        if not para:
            continue
        lines = para.splitlines()
        if all(line.startswith(("User: ", "Assistant: ")) for line in lines):
            chat = []
            for line in lines:
                role, content = line.split(": ", 1)
                chat.append(("user" if role == "User" else "assistant", content))
            chats.append(chat)
        else:
            prose.append(" ".join(lines))
    return prose, chats


# Openings of corpus paragraphs and a corpus question in ChatML. The trained ``tiny*`` presets
# continue these with the memorised text and large top-1 logit margins, which makes them good
# prompts for tests that compare greedy outputs. Prompts unlike the corpus start give word salad
# with small margins (top-1 minus top-2 logit ~1).
TINY_PROMPTS: tuple[str, ...] = (
    "Once upon a time, in a small village",
    "The capital of France is",
    "The river runs from",
    "Mount Everest is",
    "A young girl named Lily",
    "The train left the city",
    "To make a cup of tea,",
    "The tortoise and the hare",
)
TINY_CHAT_PROMPT = "<|im_start|>user\nWhat is two plus two?<|im_end|>\n<|im_start|>assistant\n"


def multilingual_prompts(n: int = 8, words: int = 3) -> list[str]:
    """The first ``words`` words of the first ``n`` multilingual paragraphs: the
    ``tiny-multilingual`` preset continues them with the memorised multilingual text."""
    prose, _ = split_corpus(multilingual_corpus())
    return [" ".join(p.split()[:words]) for p in prose[:n]]
