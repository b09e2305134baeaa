"""Request bodies as JSON, strictly: what ``json.loads`` lets through but a request cannot hold
is a 400 (BadRequestError) with what is wrong, never a 500 further down.

Refused besides malformed JSON: bytes that are not UTF-8, NaN and Infinity (not JSON, though
Python's parser reads them), lone UTF-16 surrogates such as ``"\\ud800"`` (no tokenizer can
encode them) and nesting deeper than Python's recursion limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sglang.srt.managers.io_struct import BadRequestError

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _no_constant(name: str) -> Any:
    raise BadRequestError(f"malformed JSON body: {name} is not a JSON number")


def parse_json_body(raw: bytes, what: str = "malformed JSON body") -> Any:
    try:
        obj = json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"{what}: {e}") from None
    except RecursionError:
        raise BadRequestError(f"{what}: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(raw):  # pairs are fine; a lone one cannot be encoded
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequestError(
                f"{what}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff escape "
                "without its pair); it is not a character") from None
    return obj
