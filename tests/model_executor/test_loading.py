"""ModelConfig parsing, sharded safetensors, dummy weights, dtypes, and loader errors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from me_helpers import PagedDriver, build_hf_model, hf_logits, max_diff, rand_tokens, save_and_load

from sglang.srt.model_executor.model_config import ModelConfig
from sglang.srt.model_executor.model_runner import ModelRunner


def test_model_config_fields(tmp_path):
    model = build_hf_model("qwen3")
    model.save_pretrained(tmp_path)
    with open(tmp_path / "generation_config.json", "w") as f:
        json.dump({"eos_token_id": [2, 7]}, f)
    cfg = ModelConfig.from_pretrained(str(tmp_path))
    assert cfg.architecture == "Qwen3ForCausalLM"
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (64, 2, 4, 2)
    assert cfg.head_dim == 32 and cfg.vocab_size == 128 and cfg.context_length == 256
    assert cfg.torch_dtype == torch.float32 and cfg.eos_token_ids == {2, 7}
    assert ModelConfig.from_pretrained(str(tmp_path), context_length=100).context_length == 100
    assert ModelConfig.from_pretrained(str(tmp_path), dtype="half").torch_dtype == torch.float16
    assert (
        ModelConfig.from_pretrained(str(tmp_path), dtype="bfloat16").torch_dtype == torch.bfloat16
    )
    runner = ModelRunner(cfg)
    actual = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    assert cfg.model_weight_bytes() == actual


def test_model_config_errors(tmp_path):
    with pytest.raises(ValueError, match="not a local directory"):
        ModelConfig.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="config.json"):
        ModelConfig.from_pretrained(str(tmp_path))
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, f)
    with pytest.raises(ValueError, match="unsupported model architecture"):
        ModelConfig.from_pretrained(str(tmp_path))


def test_auto_dtype_and_mistral_window(tmp_path):
    model = build_hf_model("mistral", sliding_window=64)
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    cfg = ModelConfig.from_pretrained(str(tmp_path))
    assert cfg.torch_dtype == torch.bfloat16
    assert cfg.context_length == 64  # capped to the sliding window, inside which we are exact


def test_sharded_safetensors(tmp_path):
    hf = build_hf_model("llama")
    runner = save_and_load(hf, tmp_path, max_shard_size="60KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]) > 2
    toks = rand_tokens(19, seed=0)
    (out,) = PagedDriver(runner, 4).extend([("r", toks)])
    assert max_diff(out, hf_logits(hf, toks)) <= 1e-4


def test_missing_or_absent_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    build_hf_model("llama").save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.1.self_attn.k_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="k_proj|qkv_proj"):
        ModelRunner(ModelConfig.from_pretrained(str(tmp_path)))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="no .*weights"):
        ModelRunner(ModelConfig.from_pretrained(str(tmp_path)), load_format="safetensors")


def test_dummy_weights_are_runnable_and_seeded(tmp_path):
    build_hf_model("qwen2").config.save_pretrained(tmp_path)  # config only, no weights
    cfg = ModelConfig.from_pretrained(str(tmp_path))
    toks = rand_tokens(10, seed=0)
    outs = []
    for seed in (1, 1, 2):
        runner = ModelRunner(cfg, load_format="dummy", seed=seed)
        (logits,) = PagedDriver(runner, 1).extend([("r", toks)])
        assert torch.isfinite(logits).all()
        outs.append(logits)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_close_to_fp32_reference(tmp_path, dtype):
    hf = build_hf_model("llama")
    runner = save_and_load(hf, tmp_path, dtype=dtype)
    assert runner.kv_layout(16).dtype == getattr(torch, dtype)
    d = PagedDriver(runner, 16)
    toks = rand_tokens(24, seed=0)
    (out,) = d.extend([("r", toks[:20])])
    dec = [d.decode([("r", t)])[0] for t in toks[20:]]
    ref = hf_logits(hf, toks)
    # Rounding of a 16-bit model, against float32: loose, but catches any real mistake.
    assert max_diff(torch.cat([out, torch.stack(dec)]), ref) < 0.15
