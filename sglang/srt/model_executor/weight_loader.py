"""Checkpoint reading (safetensors: single file or sharded with an index) and dummy weights."""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

import torch
import torch.nn as nn

LOAD_FORMATS = ("auto", "safetensors", "dummy")


def checkpoint_files(model_dir: str, load_format: str = "auto") -> list[str]:
    """The weight files of ``model_dir``: safetensors first; .bin files only under "auto"."""
    if load_format not in ("auto", "safetensors"):
        raise ValueError(f"load format {load_format!r} reads no files")
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, s) for s in shards]
        absent = [f for f in files if not os.path.isfile(f)]
        if absent:
            raise ValueError(f"shards listed in {index} are missing: {absent}")
        return files
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if files:
        return files
    if load_format == "auto":
        files = sorted(glob.glob(os.path.join(model_dir, "pytorch_model*.bin")))
        if files:
            return files
    raise ValueError(f"no {'' if load_format == 'auto' else 'safetensors '}weights in {model_dir}")


def iter_weights(model_dir: str, load_format: str = "auto") -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, one file at a time (memory-mapped)."""
    for path in checkpoint_files(model_dir, load_format):
        if path.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state


@torch.no_grad()
def init_dummy_weights(model: nn.Module, seed: int, std: float = 0.02) -> None:
    """Random weights from the config alone, reproducible for a seed whatever the device:
    normal(0, std) matrices, norm scales 1, biases 0."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            w = torch.empty(param.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
            param.copy_(w)
