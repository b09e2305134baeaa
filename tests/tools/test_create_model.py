"""Tests for sglang.tools.create_model (CPU only, real transformers, no downloads)."""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from sglang.tools.create_model import create_model, main, model_config, param_shapes
from sglang.tools.model_factory import training
from sglang.tools.model_factory.corpus import TINY_CHAT_PROMPT, TINY_PROMPTS, load_corpus

PROMPTS = TINY_PROMPTS[:6]
# Threshold on the median top-1 minus top-2 logit gap over greedily generated positions.
# Measured: ~5.5 for the trained tiny model on these prompts, ~1 on prompts unlike the corpus
# and for a model trained 4x shorter, ~0.1 untrained. Running the model in bf16 instead of fp32
# moves its logits by at most ~0.3, so a median of 3.0 is >10x the kernel noise.
MIN_MEDIAN_MARGIN = 3.0


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The models are tiny: extra threads only add overhead, badly so on shared CPUs.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_dir(tiny_model: str) -> Path:
    """The session's seed-0 tiny model: ``cached_model`` built it with this same
    ``create_model("tiny", seed=0)`` (a fresh clone, as CI, builds it with the current code;
    training it again here cost ~25 s). Every step of a build is exercised below anyway, by
    test_determinism_and_sharding's short runs."""
    return Path(tiny_model)


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> tuple[AutoModelForCausalLM, PreTrainedTokenizerFast]:
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.eval()
    return model, AutoTokenizer.from_pretrained(tiny_dir)


def _greedy(model, tok, prompt: str, n: int) -> tuple[str, list[float]]:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(
            ids, max_new_tokens=n, do_sample=False, output_scores=True,
            return_dict_in_generate=True,
        )
    margins = []
    for scores in out.scores:
        top = scores[0].topk(2).values
        margins.append(float(top[0] - top[1]))
    return tok.decode(out.sequences[0, ids.shape[1]:]), margins


def test_tiny_files_and_config(tiny_dir: Path) -> None:
    names = {p.name for p in tiny_dir.iterdir()}
    assert {
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json",
    } <= names
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["torch_dtype"] == "float32"
    assert cfg["max_position_embeddings"] == 4096
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    tok_cfg = json.loads((tiny_dir / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>"
    assert cfg["eos_token_id"] in gen["eos_token_id"] and len(gen["eos_token_id"]) == 2


def test_tiny_loads_and_tokenizer_roundtrips(tiny) -> None:
    model, tok = tiny
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert len(tok) == model.config.vocab_size
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "Hello  world, the cat sat.\n\nNew line!\t é ü 日本 <|im_end|>"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids("<|im_start|>") in tok("<|im_start|>user").input_ids
    assert tok.decode([tok.convert_tokens_to_ids("<|im_end|>")]) == "<|im_end|>"
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_chat_template(tiny) -> None:
    model, tok = tiny
    msgs = [{"role": "user", "content": "What is the capital of Japan?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\nWhat is the capital of Japan?<|im_end|>\n<|im_start|>assistant\n"
    )
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of Japan?"}]}
    ]
    assert tok.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == text
    # The model learned ChatML from the corpus dialogues: it answers and then emits <|im_end|>.
    msgs = [{"role": "user", "content": "What is two plus two?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == TINY_CHAT_PROMPT
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:])
    assert answer == "Two plus two is four.<|im_end|>"


def test_greedy_output_is_corpus_words_with_large_margin(tiny) -> None:
    model, tok = tiny
    vocab = set(re.findall(r"[a-z']+", load_corpus().lower()))
    words: list[str] = []
    margins: list[float] = []
    for prompt in PROMPTS:
        text, m = _greedy(model, tok, prompt, 32)
        words += re.findall(r"[a-z']+", text.lower())
        margins += m
    assert len(words) >= 6 * 10
    known = sum(w in vocab for w in words) / len(words)
    assert known >= 0.8, (known, words)
    assert statistics.median(margins) >= MIN_MEDIAN_MARGIN, statistics.median(margins)


def test_determinism_and_sharding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Short training runs exercise exactly the same code path as the full ones.
    monkeypatch.setattr(training, "STEPS", 4)
    a = create_model("tiny", tmp_path / "a", seed=1)
    b = create_model("tiny", tmp_path / "b", seed=1)
    c = create_model("tiny", tmp_path / "c", seed=2)
    assert _hashes(a) == _hashes(b)
    hc = _hashes(c)
    assert hc["model.safetensors"] != _hashes(a)["model.safetensors"]
    assert hc["tokenizer.json"] == _hashes(a)["tokenizer.json"]

    main(["--preset", "tiny", "--output", str(tmp_path / "s"), "--seed", "1",
          "--shard-size-mb", "1"])
    s = tmp_path / "s"
    index = json.loads((s / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (s / "model.safetensors").exists()
    sharded = AutoModelForCausalLM.from_pretrained(s)
    single = AutoModelForCausalLM.from_pretrained(a)
    for (n1, p1), (n2, p2) in zip(sharded.state_dict().items(), single.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1


@pytest.mark.parametrize("preset", ["tiny-qwen2", "tiny-qwen3", "tiny-mistral"])
def test_other_tiny_architectures_load(
    preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(training, "STEPS", 2)
    d = create_model(preset, tmp_path / preset)
    model = AutoModelForCausalLM.from_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    assert type(model).__name__ == cfg["architectures"][0]
    with safe_open(d / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, _ in param_shapes(cfg)}
    if preset == "tiny-qwen2":
        assert "model.layers.0.self_attn.q_proj.bias" in keys
    if preset == "tiny-qwen3":
        assert "model.layers.0.self_attn.q_norm.weight" in keys
        assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 64


def test_smollm2_135m(tmp_path: Path) -> None:
    d = create_model("smollm2-135m", tmp_path / "smol", seed=0)
    cfg = json.loads((d / "config.json").read_text())
    expected = {
        "vocab_size": 49152, "hidden_size": 576, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "intermediate_size": 1536,
        "tie_word_embeddings": True, "rope_theta": 100000.0, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
    }
    assert {k: cfg[k] for k in expected} == expected
    with safe_open(d / "model.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        emb = f.get_tensor("model.embed_tokens.weight")
    assert shapes == dict(param_shapes(cfg))
    assert "lm_head.weight" not in shapes
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 134_515_008
    assert emb.dtype == torch.bfloat16 and 0.018 < emb.float().std().item() < 0.022
    tok = AutoTokenizer.from_pretrained(d)
    assert len(tok) == 49152
    assert tok.decode([0, 49151]) == "<|endoftext|><filler_049151>"
    assert tok.decode(tok("The cat sat.").input_ids) == "The cat sat."


def test_qwen3_0_6b_config() -> None:
    cfg = model_config("qwen3-0.6b")
    expected = {
        "architectures": ["Qwen3ForCausalLM"], "vocab_size": 151936, "hidden_size": 1024,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 3072, "tie_word_embeddings": True,
        "rope_theta": 1000000.0, "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
        "torch_dtype": "bfloat16",
    }
    assert {k: cfg[k] for k in expected} == expected
    shapes = dict(param_shapes(cfg))
    assert shapes["model.layers.0.self_attn.q_proj.weight"] == (2048, 1024)
    assert shapes["model.layers.27.self_attn.k_norm.weight"] == (128,)
    assert "lm_head.weight" not in shapes
    assert sum(torch.Size(s).numel() for s in shapes.values()) == 596_049_920


def test_unknown_preset(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown preset"):
        create_model("nope", tmp_path)
