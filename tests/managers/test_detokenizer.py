"""IncrementalDetokenizer with the tiny model's real byte-level tokenizer, under hypothesis.

The reference is what a non-streamed request returns: ``tokenizer.decode`` of all output ids,
cut where the matched stop string first occurs.
"""

from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from sglang.srt.managers.detokenizer import REPLACEMENT, IncrementalDetokenizer

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Accented Latin, CJK, kana, Hangul, Cyrillic, emoji (4-byte), combining marks, ASCII words.
ALPHABET = st.sampled_from(
    list("abcxyz ,.\n") + list("éèàçüößñøåł") + list("你好世界中文字") + list("こんにちはカタ")
    + list("한국어") + list("привет") + ["😀", "🎉", "👍🏽", "🇫🇷", "\u0301", "\u200d"]
)
WORDS = st.sampled_from(["the ", "Once upon a time", " river", "café", "naïve", "日本語", "🙂"])
TEXT = st.lists(st.one_of(ALPHABET, WORDS), min_size=1, max_size=40).map("".join)


@pytest.fixture(scope="module")
def tok(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def reference(tok, ids: list[int], skip: bool, matched: Optional[str]) -> str:
    text = tok.decode(ids, skip_special_tokens=skip)
    if matched is not None and (cut := text.find(matched)) >= 0:
        text = text[:cut]
    return text


def chunks(ids: list[int], cuts: list[int]) -> list[list[int]]:
    bounds = [0, *sorted(c % (len(ids) + 1) for c in cuts), len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


def stream(tok, parts: list[list[int]], skip: bool = True, **kw) -> tuple[list[str], str]:
    """Deltas of each push, and the finish delta."""
    d = IncrementalDetokenizer(tok, skip, **kw)
    deltas = []
    for p in parts:
        deltas.append(d.push(p))
        assert d.text == "".join(deltas)
    return deltas, d.finish()


def test_a_character_split_over_tokens_comes_out_whole(tok):
    ids = tok.encode("a你b")
    assert len(ids) > 3 and REPLACEMENT in tok.decode(ids[1:2])  # 你 spans tokens
    deltas, last = stream(tok, [[i] for i in ids])
    assert [d for d in deltas if d] == ["a", "你", "b"] and last == ""


@SETTINGS
@given(data=st.data(), skip=st.booleans())
def test_arbitrary_ids_any_chunking_add_up_to_the_full_decode(tok, data, skip):
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1), min_size=0, max_size=30))
    cuts = data.draw(st.lists(st.integers(0, 1000), max_size=8))
    deltas, last = stream(tok, chunks(ids, cuts), skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(deltas) + last == full
    for d in deltas:  # a released chunk never ends inside a character; only the flush may
        assert not d.endswith(REPLACEMENT)


@SETTINGS
@given(text=TEXT)
def test_multilingual_text_split_at_every_point(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for at in range(len(ids) + 1):
        deltas, last = stream(tok, [ids[:at], ids[at:]])
        assert "".join(deltas) + last == text and last == ""  # valid text: nothing held
    deltas, last = stream(tok, [[i] for i in ids])  # one token per step, as when streaming
    assert "".join(deltas) + last == text and last == ""
    for d in deltas:
        assert REPLACEMENT not in d


def run_like_a_server(tok, ids, stops, skip=True, trim=True, late=0):
    """Push one id per step and finish on the first stop string in the decoded text, as the
    scheduler does (``late`` steps later: a scheduler that decodes differently, e.g. with the
    special tokens, may see a match after the text has it); returns (deltas, final delta,
    matched, the ids pushed)."""
    d = IncrementalDetokenizer(tok, skip, stops, trim_stop=trim)
    deltas, matched, seen_at = [], None, None
    for n in range(1, len(ids) + 1):
        deltas.append(d.push(ids[n - 1 : n]))
        text = tok.decode(ids[:n], skip_special_tokens=skip)
        if matched is None:
            matched = next((s for s in stops if s in text), None)
            seen_at = n
        if matched is not None and n - seen_at >= late:
            return deltas, d.finish(matched), matched, ids[:n]
    return deltas, d.finish(matched), matched, ids


@SETTINGS
@given(data=st.data(), trim=st.booleans(), late=st.integers(0, 3))
def test_stop_strings_never_stream_what_the_final_text_cuts(tok, data, trim, late):
    text = data.draw(TEXT)
    ids = tok.encode(text)
    # Stop strings taken from the text itself (so they do match), plus arbitrary ones.
    picks = data.draw(st.lists(st.tuples(st.integers(0, len(text)), st.integers(1, 6)),
                               min_size=1, max_size=3))
    stops = [text[a : a + n] for a, n in picks if text[a : a + n]]
    stops += data.draw(st.lists(TEXT, max_size=2))
    deltas, last, matched, used = run_like_a_server(tok, ids, stops, trim=trim, late=late)
    final = reference(tok, used, True, matched if trim else None)
    sent = ""
    for d in deltas:
        sent += d
        assert final.startswith(sent)  # never a character the final text does not have
    assert sent + last == final


def test_stop_string_prefix_is_held_then_released(tok):
    ids = tok.encode("ab STOq rest")
    deltas, last, matched, _ = run_like_a_server(tok, ids, ["STOP"])
    assert matched is None and "".join(deltas) + last == "ab STOq rest"
    ids = tok.encode("ab STOP rest")
    deltas, last, matched, _ = run_like_a_server(tok, ids, ["STOP"])
    assert matched == "STOP" and "".join(deltas) + last == "ab "
    assert all("S" not in d for d in deltas)


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_follow_skip_special_tokens(tok, skip):
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    ids = tok.encode("héllo 你") + [eos]
    deltas, last = stream(tok, [[i] for i in ids], skip)
    out = "".join(deltas) + last
    assert out == tok.decode(ids, skip_special_tokens=skip)
    assert out.endswith("<|im_end|>") != skip
