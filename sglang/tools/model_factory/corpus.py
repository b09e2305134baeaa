"""The built-in training corpus (``sglang/tools/data/corpus.txt``)."""

from __future__ import annotations

from pathlib import Path

CORPUS_PATH = Path(__file__).resolve().parent.parent / "data" / "corpus.txt"


def load_corpus() -> str:
    return CORPUS_PATH.read_text(encoding="utf-8")


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
