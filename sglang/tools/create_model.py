"""Offline factory for small Hugging Face-format causal LMs used by tests and benchmarks.

    python -m sglang.tools.create_model --preset tiny --output /tmp/tiny [--seed 0]
        [--shard-size-mb N]

Nothing is downloaded. The ``tiny*`` presets are trained for a few seconds on the built-in
corpus (``sglang/tools/data/corpus.txt``): they continue corpus paragraph openings (see
``model_factory.corpus.TINY_PROMPTS``) with the memorised text and large top-1 logit margins,
so greedy outputs are stable across kernels; ``tiny-multilingual`` is trained the same way on a
seeded random multilingual text (prompts: ``model_factory.corpus.multilingual_prompts``).
``smollm2-135m`` and ``qwen3-0.6b`` have the real models' shapes with random weights. Same preset + seed gives byte-identical files (on one
machine with one set of library versions); another seed gives other weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from sglang.tools.model_factory.presets import PRESETS, Preset, build_config, get_preset
from sglang.tools.model_factory.tokenizer import save_tokenizer, special_ids, train_tokenizer

logger = logging.getLogger(__name__)


def create_model(
    preset: str, output_dir: str | Path, seed: int = 0, shard_size_mb: int | None = None
) -> Path:
    """Create the model directory for ``preset`` in ``output_dir`` and return its path."""
    from sglang.tools.model_factory.training import train_model
    from sglang.tools.model_factory.weights import (
        DTYPES,
        TensorSpec,
        random_specs,
        save_weights,
        specs_from_state_dict,
    )

    spec = get_preset(preset)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("model*.safetensors"), *out.glob("model.safetensors.index.json")]:
        old.unlink()  # stale weights from an earlier run would confuse loaders

    tok = train_tokenizer()
    ids = special_ids(tok)
    config = _config(spec, tok)
    vocab_size = config["vocab_size"]
    dtype = DTYPES[spec.dtype]

    tensors: list[TensorSpec]
    if spec.trained:
        result = train_model(config, tok, seed, spec.corpus)
        logger.info(
            "trained %s in %.1fs, final loss %.3f", preset, result.seconds, result.final_loss
        )
        state = {k: v.to(dtype) for k, v in result.state.items()}
        tensors = specs_from_state_dict(state)
    else:
        tensors = random_specs(param_shapes(config), dtype, seed, config["initializer_range"])
    save_weights(out, tensors, shard_size_mb)

    _write_json(out / "config.json", config)
    generation_config = {
        "bos_token_id": ids.endoftext,
        "eos_token_id": [ids.im_end, ids.endoftext],
        "pad_token_id": ids.endoftext,
    }
    _write_json(out / "generation_config.json", generation_config)
    save_tokenizer(tok, out, vocab_size, config["max_position_embeddings"])
    return out


def model_config(preset: str) -> dict[str, Any]:
    """The ``config.json`` dict that :func:`create_model` writes for ``preset``."""
    return _config(get_preset(preset), train_tokenizer())


def _config(spec: Preset, tok: Tokenizer) -> dict[str, Any]:
    ids = special_ids(tok)
    # Trained presets: the tokenizer's size rounded up to a multiple of 64 (filler tokens pad
    # the tokenizer to match, as for the big presets).
    vocab_size = spec.vocab_size or -(-tok.get_vocab_size() // 64) * 64
    return build_config(spec, vocab_size, bos_token_id=ids.endoftext, eos_token_id=ids.im_end)


def param_shapes(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the checkpoint tensors, from a meta-device HF model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in config.items() if k not in ("model_type", "torch_dtype")}
    hf_config = AutoConfig.for_model(config["model_type"], **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    if config.get("tie_word_embeddings"):
        shapes = [(n, s) for n, s in shapes if n != "lm_head.weight"]
    return shapes


def cached_model(preset: str, cache_dir: str | Path, seed: int = 0) -> str:
    """``cache_dir/<preset>-seed<seed>``, built on first use. It is written to a ``.partial``
    folder and renamed, so an interrupted build is never mistaken for a finished one."""
    import shutil

    out = Path(cache_dir) / f"{preset}-seed{seed}"
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        create_model(preset, tmp, seed=seed)
        tmp.rename(out)
    return str(out)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--shard-size-mb",
        type=int,
        default=None,
        help="split the weights into shards of at most this many MB (10**6 bytes)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    out = create_model(args.preset, args.output, seed=args.seed, shard_size_mb=args.shard_size_mb)
    print(f"wrote {args.preset} to {out} in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
