"""The official ``openai`` client against a real server (unified) and against mini_lb (PD)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pool_checks import assert_pool_whole

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
import openai_checks  # noqa: E402

CHECKS = ["check_models", "check_completion", "check_completion_stream", "check_chat",
          "check_chat_stream", "check_logprobs", "check_stop", "check_bad_requests",
          "check_concurrent"]


@pytest.fixture(scope="module")
def pd(pd_clusters):
    return pd_clusters("mooncake")  # the session's 1P1D cluster; ``unified``: the session's too


@pytest.mark.parametrize("check", CHECKS)
def test_openai_client_against_unified_server(unified, check):
    getattr(openai_checks, check)(unified)
    assert_pool_whole(unified)


@pytest.mark.parametrize("check", CHECKS)
def test_openai_client_against_mini_lb(pd, check):
    getattr(openai_checks, check)(pd.url)
    for p in pd.prefills + pd.decodes:
        assert_pool_whole(p.url)


def test_unknown_model_name_is_400(unified):
    import openai

    c = openai_checks.client(unified)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="no-such-model", max_tokens=4,
                                  messages=[{"role": "user", "content": "hi"}])
    assert "no-such-model" in str(e.value)
