from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "disaggregation"))
MODEL_CACHE = Path(os.environ.get("SGLANG_TEST_MODEL_DIR", ROOT / "models"))


def built_model(preset: str, seed: int = 0) -> str:
    """A locally built model, made once and reused (models/ is git-ignored)."""
    from sglang.tools.create_model import cached_model

    return cached_model(preset, MODEL_CACHE, seed)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    return built_model("tiny")


@pytest.fixture(scope="session")
def multilingual_model() -> str:
    return built_model("tiny-multilingual")


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("logs"))
