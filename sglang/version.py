"""The package version (bottom layer: imports nothing; as in SGLang, sglang/version.py)."""

__version__ = "0.1.0"
