"""The KV cache's storage dtype (``--kv-cache-dtype``): how its name resolves to a torch dtype,
what it is called at the PD handshake, and how K/V values are written to and read from the pool.

``auto`` stores the model's dtype; ``bf16``/``bfloat16`` and ``fp16``/``float16`` store that
dtype; ``fp8_e4m3`` / ``fp8_e5m2`` store ``torch.float8_e4m3fn`` / ``torch.float8_e5m2``: a plain
cast with scale 1.0 (SGLang's behaviour when no scales are given), saturated to the format's
largest finite value, and widened back to the compute dtype on every read. Torch's CPU index ops
do not take float8, so an fp8 pool is indexed through ``uint8`` views of the same bytes.
"""

from __future__ import annotations

import torch

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
_NAMED = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    **FP8_DTYPES,
}
# What the handshake and /get_server_info call each storage dtype (SGLang's spellings).
_NAMES = {
    torch.bfloat16: "bfloat16",
    torch.float16: "float16",
    torch.float32: "float32",
    torch.float8_e4m3fn: "fp8_e4m3",
    torch.float8_e5m2: "fp8_e5m2",
}


def resolve_kv_cache_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype a pool stores for ``--kv-cache-dtype name`` (``auto``: the model's)."""
    if name in (None, "", "auto"):
        return model_dtype
    try:
        return _NAMED[name]
    except KeyError:
        raise ValueError(
            f"--kv-cache-dtype must be one of auto, {', '.join(_NAMED)}, got {name!r}"
        ) from None


def kv_dtype_name(dtype: torch.dtype) -> str:
    """``fp8_e4m3``, ``bfloat16``, ...: the name both PD sides compare and report."""
    return _NAMES.get(dtype, str(dtype).removeprefix("torch."))


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


class KVCodec:
    """Turns compute-dtype K/V rows into what the pool holds, and pool rows back.

    ``view(t)`` is the tensor index ops run on (``uint8`` for fp8 pools); ``encode`` gives rows
    in that view's dtype, ``decode`` rows in the compute dtype. The identity when the pool stores
    the compute dtype."""

    def __init__(self, store_dtype: torch.dtype, compute_dtype: torch.dtype):
        self.store_dtype = store_dtype
        self.compute_dtype = compute_dtype
        self.fp8 = is_fp8(store_dtype)
        self.identity = store_dtype == compute_dtype
        self._max = torch.finfo(store_dtype).max if self.fp8 else None

    def view(self, pool_tensor: torch.Tensor) -> torch.Tensor:
        return pool_tensor.view(torch.uint8) if self.fp8 else pool_tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8:
            # Saturate: a plain cast may give NaN above the format's range on some devices.
            x = x.clamp(-self._max, self._max).to(self.store_dtype)
            return x.view(torch.uint8)
        return x if x.dtype == self.store_dtype else x.to(self.store_dtype)

    def decode(self, raw: torch.Tensor) -> torch.Tensor:
        if self.fp8:
            return raw.view(self.store_dtype).to(self.compute_dtype)
        return raw if raw.dtype == self.compute_dtype else raw.to(self.compute_dtype)
