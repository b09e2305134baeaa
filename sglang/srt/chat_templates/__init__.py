"""Chat templates shipped with the package, and how --chat-template is resolved.

``--chat-template`` takes a path to a Jinja file, or the name of a template shipped here
(``chatml``). The OpenAI chat route then renders conversations with it instead of the template
in the tokenizer's config.
"""

from __future__ import annotations

import os
from importlib import resources


def builtin_names() -> list[str]:
    files = resources.files(__package__)
    return sorted(f.name[: -len(".jinja")] for f in files.iterdir() if f.name.endswith(".jinja"))


def load_chat_template(value: str) -> str:
    """The template text for a --chat-template value; ValueError if it names nothing."""
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            text = f.read()
    elif value in builtin_names():
        text = resources.files(__package__).joinpath(f"{value}.jinja").read_text("utf-8")
    else:
        raise ValueError(
            f"--chat-template {value!r} is neither a file nor a shipped template "
            f"({', '.join(builtin_names())})"
        )
    if not text.strip():
        raise ValueError(f"--chat-template {value!r} is empty")
    return text
