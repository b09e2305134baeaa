"""Streaming safetensors writer (single file or sharded) and HF-style random initialisation."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

_DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
_CHUNK = 1 << 22
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class TensorSpec:
    """A tensor to be written; ``make`` produces it lazily so only one lives in memory at once."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Callable[[], torch.Tensor]

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * torch.empty((), dtype=self.dtype).element_size()


def specs_from_state_dict(state: dict[str, torch.Tensor]) -> list[TensorSpec]:
    return [
        TensorSpec(name, tuple(t.shape), t.dtype, (lambda t=t: t)) for name, t in state.items()
    ]


def random_specs(
    shapes: Iterable[tuple[str, tuple[int, ...]]], dtype: torch.dtype, seed: int, std: float
) -> list[TensorSpec]:
    """HF-style init: norm weights 1, biases 0, everything else normal(0, std).

    Each tensor has its own generator seeded from (seed, name), so the result does not depend
    on generation order and tensors can be produced one at a time.
    """

    def make(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        if name.endswith("norm.weight"):
            return torch.ones(shape, dtype=dtype)
        if name.endswith(".bias"):
            return torch.zeros(shape, dtype=dtype)
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
        out = torch.empty(shape, dtype=dtype)
        flat = out.view(-1)
        for start in range(0, flat.numel(), _CHUNK):  # no full-size float32 temporary
            n = min(_CHUNK, flat.numel() - start)
            flat[start : start + n] = torch.randn(n, generator=gen).mul_(std)
        return out

    return [TensorSpec(n, s, dtype, (lambda n=n, s=s: make(n, s))) for n, s in shapes]


def write_safetensors(path: Path, specs: list[TensorSpec]) -> None:
    """Write a .safetensors file tensor by tensor (peak memory: one tensor)."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": _DTYPE_NAMES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for spec in specs:
            t = spec.make()
            if tuple(t.shape) != spec.shape or t.dtype != spec.dtype:
                raise ValueError(f"{spec.name}: got {tuple(t.shape)} {t.dtype}")
            f.write(t.contiguous().view(torch.uint8).numpy().data)
            del t


def save_weights(out: Path, specs: list[TensorSpec], shard_size_mb: int | None) -> list[Path]:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    if shard_size_mb is None:
        path = out / "model.safetensors"
        write_safetensors(path, specs)
        return [path]
    if shard_size_mb <= 0:
        raise ValueError("shard_size_mb must be positive")
    limit = shard_size_mb * 10**6
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    n = len(shards)
    weight_map: dict[str, str] = {}
    paths = []
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        write_safetensors(out / fname, shard)
        paths.append(out / fname)
        weight_map.update({spec.name: fname for spec in shard})
    index = {
        "metadata": {"total_size": sum(spec.nbytes for spec in specs)},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths
