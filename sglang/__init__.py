"""An LLM serving engine with SGLang's interfaces, centred on prefill/decode disaggregation."""

from __future__ import annotations

from sglang.version import __version__  # noqa: F401


def __getattr__(name: str):
    if name == "Engine":
        from sglang.srt.entrypoints.engine import Engine

        return Engine
    raise AttributeError(name)
