"""What the engine needs to know about a HF-format model directory, read from its config files."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

logger = logging.getLogger(__name__)

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "float": torch.float32,
}

# For a config.json without "architectures" (e.g. one written from a bare config object).
_BY_MODEL_TYPE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# The architectures sglang/srt/models/registry.py can build (it checks it agrees).
SUPPORTED_ARCHITECTURES = frozenset(_BY_MODEL_TYPE.values())


def resolve_dtype(dtype: str, config_dtype: Any) -> torch.dtype:
    """``dtype`` as given on the command line; "auto" takes the checkpoint's own dtype."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use auto, {', '.join(_DTYPES)}")
        return _DTYPES[dtype]
    if isinstance(config_dtype, torch.dtype):
        config_dtype = str(config_dtype).removeprefix("torch.")
    if config_dtype is None:
        return torch.float32
    if config_dtype not in _DTYPES:
        raise ValueError(f"checkpoint dtype {config_dtype!r} is not supported; pass --dtype")
    return _DTYPES[config_dtype]


def resolve_model_dir(path: str) -> str:
    """A local directory, or a hub id already in the local HF cache (no download)."""
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception:
        raise ValueError(
            f"model path {path!r} is not a local directory and is not in the local "
            "Hugging Face cache"
        ) from None


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _as_id_set(v: Any) -> set[int]:
    if v is None:
        return set()
    if isinstance(v, int):
        return {v}
    return {int(x) for x in v}


@dataclass
class ModelConfig:
    path: str
    architecture: str
    hf_config: Any
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    context_length: int
    torch_dtype: torch.dtype
    tie_word_embeddings: bool
    eos_token_ids: set[int] = field(default_factory=set)

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: str = "auto", context_length: Optional[int] = None
    ) -> "ModelConfig":
        model_dir = resolve_model_dir(path)
        raw = _read_json(os.path.join(model_dir, "config.json"))
        if not raw:
            raise ValueError(f"{model_dir!r} has no config.json: not a HF-format model directory")
        archs = raw.get("architectures") or []
        if not archs and raw.get("model_type") in _BY_MODEL_TYPE:
            archs = [_BY_MODEL_TYPE[raw["model_type"]]]
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ValueError(
                f"unsupported model architecture {archs or '(none given)'} in {model_dir!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(model_dir)
        num_heads = hf.num_attention_heads
        num_kv_heads = getattr(hf, "num_key_value_heads", None) or num_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_attention_heads {num_heads} is not a multiple of {num_kv_heads}")
        act = getattr(hf, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (only silu)")

        max_pos = int(getattr(hf, "max_position_embeddings", 0) or 2048)
        ctx = int(context_length) if context_length else max_pos
        if context_length and context_length > max_pos:
            logger.warning("context_length %d exceeds max_position_embeddings %d", ctx, max_pos)
        window = _sliding_window(hf)
        if window is not None and window < ctx:
            logger.warning(
                "%s uses sliding-window attention (%d); context length capped to it", arch, window
            )
            ctx = window

        gen = _read_json(os.path.join(model_dir, "generation_config.json"))
        eos = _as_id_set(raw.get("eos_token_id")) | _as_id_set(gen.get("eos_token_id"))
        return cls(
            path=model_dir,
            architecture=arch,
            hf_config=hf,
            hidden_size=hf.hidden_size,
            num_layers=hf.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            intermediate_size=hf.intermediate_size,
            vocab_size=hf.vocab_size,
            context_length=ctx,
            torch_dtype=resolve_dtype(dtype, raw.get("torch_dtype", raw.get("dtype"))),
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            eos_token_ids=eos,
        )

    def num_params(self) -> int:
        h, d, layers = self.hidden_size, self.head_dim, self.num_layers
        q, kv = self.num_heads * d, self.num_kv_heads * d
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size + 2 * h
        if self.architecture == "Qwen2ForCausalLM":
            per_layer += q + 2 * kv
        if self.architecture == "Qwen3ForCausalLM":
            per_layer += 2 * d
        embed = self.vocab_size * h
        return embed + layers * per_layer + h + (0 if self.tie_word_embeddings else embed)

    def model_weight_bytes(self) -> int:
        """Estimated bytes of the weights once loaded in ``torch_dtype``."""
        elem = torch.tensor([], dtype=self.torch_dtype).element_size()
        return self.num_params() * elem


def _sliding_window(hf: Any) -> Optional[int]:
    """The attention window if some layer really uses one (Mistral v0.1, Qwen with it on)."""
    window = getattr(hf, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(hf, "layer_types", None)
    if layer_types is not None:
        return int(window) if "sliding_attention" in layer_types else None
    if hasattr(hf, "use_sliding_window") and not hf.use_sliding_window:
        return None
    return int(window)
