"""Shared by the PD end-to-end tests: one unified (non-PD) server as the reference."""

from __future__ import annotations

import pytest

from sglang.test.server_utils import launch_server

REFERENCE_ARGS = ["--chunked-prefill-size", "32", "--page-size", "4", "--max-total-tokens",
                  "4096", "--context-length", "1024"]


@pytest.fixture(scope="session")
def unified(tiny_model, log_dir):
    """URL of a unified server; greedy answers do not depend on page or chunk size."""
    proc = launch_server(tiny_model, log_dir, "reference", REFERENCE_ARGS)
    yield proc.url
    proc.stop()
