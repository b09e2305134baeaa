"""``--model-path ORG/NAME`` (a Hugging Face hub id) goes through ``huggingface_hub``.

No network: the model is placed in a private ``HF_HOME`` in the hub cache's own layout
(``hub/models--ORG--NAME/snapshots/<commit>/`` plus ``refs/main``) and the server runs with
``HF_HUB_OFFLINE=1``, so the real ``snapshot_download`` resolves the id from that cache, as it
does after a first download. A server given an id that is in no cache fails at start-up and says
what to do.
"""

from __future__ import annotations

import shutil

import pytest
import requests

from sglang.test.server_utils import launch_server

REPO = "sglang-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
GREEDY = {"temperature": 0, "max_new_tokens": 12}


@pytest.fixture(scope="module")
def hf_home(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    repo_dir = home / "hub" / ("models--" + REPO.replace("/", "--"))
    shutil.copytree(tiny_model, repo_dir / "snapshots" / COMMIT)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    return home


def test_hub_id_resolves_through_huggingface_hub(hf_home, unified, log_dir):
    """The id's server answers as the session's reference server on the local tiny model (greedy
    answers do not depend on its page or chunk size)."""
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    by_id = launch_server(REPO, log_dir, "hub-id", env=env)
    try:
        info = requests.get(by_id.url + "/get_model_info", timeout=30).json()
        assert info["model_path"].endswith(f"snapshots/{COMMIT}"), info
        assert info["tokenizer_path"] == info["model_path"]
        out = requests.post(by_id.url + "/generate", timeout=120,
                            json={"text": "Once upon a time", "sampling_params": GREEDY}).json()
    finally:
        by_id.stop()
    ref = requests.post(unified + "/generate", timeout=120,
                        json={"text": "Once upon a time", "sampling_params": GREEDY}).json()
    assert out["output_ids"] == ref["output_ids"] and len(out["output_ids"]) == 12


def test_unknown_hub_id_fails_with_a_clear_message(hf_home, log_dir):
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    with pytest.raises(RuntimeError) as e:
        launch_server("sglang-test/no-such-model", log_dir, "hub-missing", env=env)
    assert "neither a local directory nor a reachable Hugging Face model" in str(e.value)
    assert "create_model" in str(e.value)
