"""OpenAI-compatible API: ``register_openai_routes(app, tokenizer_manager)``."""

from __future__ import annotations

from sglang.srt.entrypoints.openai.routes import register_openai_routes

__all__ = ["register_openai_routes"]
