"""Building blocks for :mod:`sglang.tools.create_model` (presets, tokenizer, training, weights)."""

from __future__ import annotations

from sglang.tools.model_factory.presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
