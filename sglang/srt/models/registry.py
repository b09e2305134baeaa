"""Architecture name (``config.json`` ``architectures[0]``) to model class, imported lazily."""

from __future__ import annotations

import importlib

import torch.nn as nn

from sglang.srt.configs.model_config import SUPPORTED_ARCHITECTURES

_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("sglang.srt.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("sglang.srt.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("sglang.srt.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("sglang.srt.models.qwen3", "Qwen3ForCausalLM"),
}

assert frozenset(_MODELS) == SUPPORTED_ARCHITECTURES, "registry and configs/model_config.py differ"


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(
            f"unsupported model architecture {architecture!r}; "
            f"supported: {', '.join(sorted(_MODELS))}"
        )
    module, name = _MODELS[architecture]
    return getattr(importlib.import_module(module), name)
