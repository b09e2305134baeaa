"""Model presets: architecture shapes and HF-style ``config.json`` dicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Shapes shared by every trained tiny preset.
_TINY_COMMON: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
}


@dataclass(frozen=True)
class Preset:
    """One model recipe.

    ``vocab_size`` None means "the trained tokenizer's size rounded up to a multiple of 64". The
    tokenizer is padded with filler tokens up to the model's vocab size. ``trained`` presets are
    trained on ``corpus`` (a name in ``model_factory.corpus.CORPORA``), the others get HF-style
    random init (normal(0, initializer_range), norms = 1, biases = 0). The tokenizer is always
    the one trained on the built-in English corpus.
    """

    name: str
    architecture: str
    model_type: str
    dtype: str
    trained: bool
    vocab_size: int | None
    fields: dict[str, Any] = field(default_factory=dict)
    corpus: str = "builtin"


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        architecture="LlamaForCausalLM",
        model_type="llama",
        dtype="float32",
        trained=True,
        vocab_size=None,
        fields={
            **_TINY_COMMON,
            "head_dim": 32,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
        },
    ),
    # The tiny Llama trained on random multilingual text: its greedy output is CJK, emoji and
    # accented Latin whose characters span several byte-level tokens (streaming tests).
    "tiny-multilingual": Preset(
        name="tiny-multilingual",
        architecture="LlamaForCausalLM",
        model_type="llama",
        dtype="float32",
        trained=True,
        vocab_size=None,
        fields={
            **_TINY_COMMON,
            "head_dim": 32,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": False,
        },
        corpus="multilingual",
    ),
    "tiny-qwen2": Preset(
        name="tiny-qwen2",
        architecture="Qwen2ForCausalLM",
        model_type="qwen2",
        dtype="float32",
        trained=True,
        vocab_size=None,
        fields={
            **_TINY_COMMON,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 4,
        },
    ),
    "tiny-qwen3": Preset(
        name="tiny-qwen3",
        architecture="Qwen3ForCausalLM",
        model_type="qwen3",
        dtype="float32",
        trained=True,
        vocab_size=None,
        fields={
            **_TINY_COMMON,
            # Explicit head_dim with num_heads * head_dim != hidden_size, as in real Qwen3.
            "head_dim": 64,
            "attention_bias": False,
            "tie_word_embeddings": False,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 4,
        },
    ),
    "tiny-mistral": Preset(
        name="tiny-mistral",
        architecture="MistralForCausalLM",
        model_type="mistral",
        dtype="float32",
        trained=True,
        vocab_size=None,
        fields={
            **_TINY_COMMON,
            "head_dim": 32,
            "sliding_window": None,
            "tie_word_embeddings": False,
        },
    ),
    "smollm2-135m": Preset(
        name="smollm2-135m",
        architecture="LlamaForCausalLM",
        model_type="llama",
        dtype="bfloat16",
        trained=False,
        vocab_size=49152,
        fields={
            "hidden_size": 576,
            "num_hidden_layers": 30,
            "num_attention_heads": 9,
            "num_key_value_heads": 3,
            "intermediate_size": 1536,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0,
            "attention_bias": False,
            "mlp_bias": False,
            "tie_word_embeddings": True,
        },
    ),
    "qwen3-0.6b": Preset(
        name="qwen3-0.6b",
        architecture="Qwen3ForCausalLM",
        model_type="qwen3",
        dtype="bfloat16",
        trained=False,
        vocab_size=151936,
        fields={
            "hidden_size": 1024,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 3072,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "attention_bias": False,
            "tie_word_embeddings": True,
            "use_sliding_window": False,
            "sliding_window": None,
            "max_window_layers": 28,
        },
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


def build_config(
    preset: Preset, vocab_size: int, bos_token_id: int, eos_token_id: int
) -> dict[str, Any]:
    """A ``config.json`` dict in the layout found on the Hub (``torch_dtype``, ``rope_theta``)."""
    config: dict[str, Any] = {
        "architectures": [preset.architecture],
        "model_type": preset.model_type,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "rope_scaling": None,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "use_cache": True,
        "torch_dtype": preset.dtype,
    }
    config.update(preset.fields)
    return dict(sorted(config.items()))
