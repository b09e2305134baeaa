"""Qwen3: the Llama decoder with per-head RMSNorm on q and k before RoPE."""

from __future__ import annotations

from typing import Any

from sglang.srt.models.llama import LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def arch_options(hf: Any) -> dict[str, bool]:
        bias = bool(getattr(hf, "attention_bias", False))
        return {"qkv_bias": bias, "o_bias": bias, "qk_norm": True, "mlp_bias": False}
