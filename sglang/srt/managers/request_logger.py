"""--log-requests: a log line when a request arrives and when it finishes.

Detail by --log-requests-level, as SGLang's: 0 metadata only (rid, token counts, finish
reason), 1 adds the sampling parameters, 2 adds the input and output text cut to 2048
characters, 3 everything (whole texts and token ids).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

logger = logging.getLogger("sglang.requests")

MAX_TEXT = 2048


def _cut(text: Any, level: int) -> Any:
    if level >= 3 or not isinstance(text, str) or len(text) <= MAX_TEXT:
        return text
    return text[:MAX_TEXT] + f"... ({len(text) - MAX_TEXT} more characters)"


class RequestLogger:
    def __init__(self, enabled: bool, level: int):
        self.enabled = enabled
        self.level = level

    def received(self, obj: Any, input_ids: list[int]) -> None:
        if not self.enabled:
            return
        parts = [f"rid={obj.rid}", f"prompt_tokens={len(input_ids)}"]
        if self.level >= 1 and obj.parsed_sampling_params is not None:
            sp = obj.parsed_sampling_params
            params = dataclasses.asdict(sp) if dataclasses.is_dataclass(sp) else vars(sp)
            parts.append(f"sampling_params={params}")
        if self.level >= 2:
            parts.append(f"text={_cut(obj.text, self.level)!r}")
        if self.level >= 3:
            parts.append(f"input_ids={input_ids}")
        logger.info("Receive: %s", ", ".join(parts))

    def finished(self, rid: str, result: dict[str, Any]) -> None:
        if not self.enabled:
            return
        meta = result.get("meta_info", {})
        parts = [
            f"rid={rid}",
            f"prompt_tokens={meta.get('prompt_tokens')}",
            f"completion_tokens={meta.get('completion_tokens')}",
            f"cached_tokens={meta.get('cached_tokens')}",
            f"finish_reason={meta.get('finish_reason')}",
        ]
        if self.level >= 2:
            parts.append(f"out_text={_cut(result.get('text'), self.level)!r}")
        if self.level >= 3:
            parts.append(f"output_ids={result.get('output_ids')}")
        logger.info("Finish: %s", ", ".join(parts))
