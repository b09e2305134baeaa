"""An LLM serving engine with SGLang's interfaces, centred on prefill/decode disaggregation."""

from __future__ import annotations

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Engine":
        from sglang.srt.entrypoints.engine import Engine

        return Engine
    raise AttributeError(name)
