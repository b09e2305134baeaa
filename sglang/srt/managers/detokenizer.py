"""Incremental detokenization of a request's output, for streaming.

Two layers, as in SGLang's DetokenizerManager and vLLM's ``detokenize_incrementally``:

* UTF-8: a character whose bytes span several byte-level tokens decodes to U+FFFD until its last
  byte arrives. Text is released only when the decoded window does not end in U+FFFD, so a delta
  never ends inside a character (a finished request flushes whatever is left). Each step decodes
  only a window ``ids[surr:]`` (the last released chunk as context, then the unreleased ids), not
  the whole output.
* Stop strings: the final text is cut where the matched stop string starts. Text that could still
  be the start of a stop string (a suffix equal to a stop string's prefix) is held back, and once
  a whole stop string has been decoded nothing more is released until the request finishes, so no
  released text is ever cut away.

Released text only grows by appending, and all of it together equals ``tokenizer.decode(ids)``
(cut at the matched stop string): the byte-level decoder turns the concatenated bytes of the
tokens into text, so decoding two runs of ids split where the first one ends on a whole
character gives the decoding of the whole run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Optional

REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        trim_stop: bool = True,
    ):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # Only trimmed stop strings need holding back: with no_stop_trim they stay in the text.
        self.stop = [s for s in stop if s] if trim_stop else []
        self.trim_stop = trim_stop
        self.ids: list[int] = []
        self.text = ""  # released so far
        self.finished = False
        self._surr = 0  # start of the decode window: the last released chunk, as context
        self._read = 0  # ids before this are released (or held only by the stop-string layer)
        self._surr_text = ""  # decode(ids[_surr:_read]), cached while ids arrive
        self._pending = ""  # whole characters decoded but held back for the stop strings
        self._saw_stop = False  # a whole stop string was decoded: release nothing until finish

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, new_ids: Iterable[int]) -> str:
        """Append output ids; returns the newly released text (often "")."""
        assert not self.finished, "push after finish"
        self.ids.extend(new_ids)
        if len(self.ids) == self._read:
            return ""
        new_text = self._decode(self.ids[self._surr :])
        if len(new_text) <= len(self._surr_text) or new_text.endswith(REPLACEMENT):
            return ""  # nothing yet, or a character is still incomplete
        self._pending += new_text[len(self._surr_text) :]
        self._surr, self._read = self._read, len(self.ids)
        self._surr_text = self._decode(self.ids[self._surr : self._read])
        return self._release(self._safe_len())

    def finish(self, matched_stop: Optional[str] = None) -> str:
        """Flush at the end of the request; returns the rest of the final text.

        ``matched_stop``: the stop string that finished the request, if any; the final text is
        cut where it first occurs (unless the detokenizer was built with ``trim_stop=False``).
        """
        assert not self.finished, "finish twice"
        self.finished = True
        if len(self.ids) > self._read:
            self._pending += self._decode(self.ids[self._surr :])[len(self._surr_text) :]
            self._read = len(self.ids)
        if matched_stop and self.trim_stop:
            # Released text never holds the start of a stop string, so the first occurrence in
            # the whole text is the first one in what is still pending.
            cut = self._pending.find(matched_stop)
            if cut >= 0:
                self._pending = self._pending[:cut]
        return self._release(len(self._pending))

    def _release(self, n: int) -> str:
        out, self._pending = self._pending[:n], self._pending[n:]
        self.text += out
        return out

    def _safe_len(self) -> int:
        """How much of ``_pending`` cannot be part of a stop string's occurrence."""
        if self._saw_stop:
            return 0
        pending = self._pending
        safe = len(pending)
        for s in self.stop:
            at = pending.find(s)
            if at >= 0:
                self._saw_stop = True
                safe = min(safe, at)
                continue
            for k in range(min(len(s) - 1, len(pending)), 0, -1):
                if pending.endswith(s[:k]):
                    safe = min(safe, len(pending) - k)
                    break
        return safe
