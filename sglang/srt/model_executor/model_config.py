"""Old home of ``ModelConfig``: it now lives in ``sglang.srt.configs.model_config`` (below the
models, which read it). Re-exported here for code not yet switched."""

from sglang.srt.configs.model_config import ModelConfig, resolve_dtype

__all__ = ["ModelConfig", "resolve_dtype"]
