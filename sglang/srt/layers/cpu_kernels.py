"""bf16 CPU kernels (``cpu_kernels.c``): add + RMSNorm, RoPE, KV store, decode attention, greedy
argmax; and the linear layers of CPUs without native bf16 (``cpu_gemm.c``): the library's Python
wrappers, and loading it once per process.

``load()`` builds (cpu_kernel_build.py) the best library this CPU runs, or the one
``SGLANG_CPU_KERNEL_ISA`` names, and loads it; ``CpuKernels`` refuses a file that declares an
extension this CPU lacks, before ``dlopen``. The library uses the OpenMP runtime torch already
loaded (same ``libgomp.so.1``), so the kernels use torch's thread count.

``get()`` returns None, and the callers keep their torch paths, when the kernels are disabled
(``SGLANG_CPU_KERNELS=0``), there is no compiler, or the build fails (logged once).
``python -m sglang.srt.layers.cpu_kernels`` (``make install``) builds every instruction set.
"""

from __future__ import annotations

import ctypes
import logging
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

from sglang.srt.env import envs
from sglang.srt.layers import cpu_kernel_build as kb

logger = logging.getLogger(__name__)

_ABI = 4
MAX_GROUP, MAX_HEAD_DIM = 16, 256  # MAX_G and MAX_D of the C file (stack buffers)
_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float

_SIGNATURES = {
    "add_rmsnorm_bf16": [_PTR, _I64, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _F32],
    "rope_bf16": [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64],
    "store_kv_bf16": [_PTR, _I64, _PTR, _I64, _PTR, _I64, _I64, _PTR, _PTR, _I64],
    "argmax_f32": [_PTR, _I64, _I64, _I64, _PTR],
    "decode_attn_bf16": [_PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64,
                         _I64, _I64, _F32],
    "gemm_pack_bf16": [_PTR, _I64, _I64, _I64, _PTR],
    "gemm_bf16": [_PTR, _I64, _I64, _PTR, _I64, _I64, _PTR, _PTR, _I64],
}
GEMM_NR = 16  # output columns per weight panel (NR of cpu_gemm.c)


class CpuKernels:
    def __init__(self, path: Path):
        """Load the library at ``path``, refused (before ``dlopen``) if it may use an extension
        this CPU lacks."""
        self.compiled_for = kb.compiled_for(path)
        missing = self.compiled_for - kb.cpu_features()
        if missing:
            raise RuntimeError(f"{path} is built for {' '.join(sorted(missing))}, which this "
                               "CPU lacks")
        self.path = path
        torch.get_num_threads()  # make sure torch (and its libgomp) is loaded first
        self.lib = ctypes.CDLL(str(path))
        if self.lib.kernels_abi_version() != _ABI:
            raise RuntimeError(f"{path} is not ABI version {_ABI}")
        for name, argtypes in _SIGNATURES.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = argtypes, None
        self._norm = self.lib.add_rmsnorm_bf16
        self._rope = self.lib.rope_bf16
        self._store = self.lib.store_kv_bf16
        self._attn = self.lib.decode_attn_bf16
        self._argmax = self.lib.argmax_f32
        self._gemm_pack = self.lib.gemm_pack_bf16
        self._gemm = self.lib.gemm_bf16
        self.gemm_supported = bool(self.lib.gemm_supported())  # built with AVX2 + FMA

    def add_rmsnorm(
        self, x: torch.Tensor, residual: Optional[torch.Tensor], weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """``weight * norm(x)``, or with ``residual``: ``residual += x`` in place, then
        ``weight * norm(residual)``. 2-D bf16 rows with unit inner stride."""
        rows, n = x.shape
        out = torch.empty((rows, n), dtype=x.dtype)
        res_ptr, res_stride = (residual.data_ptr(), residual.stride(0)) if residual is not None \
            else (None, 0)
        self._norm(x.data_ptr(), x.stride(0), res_ptr, res_stride, weight.data_ptr(),
                   out.data_ptr(), n, rows, n, eps)
        return out

    def rope(
        self,
        qk: torch.Tensor,
        positions: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        heads: int,
        kv_heads: int,
    ) -> None:
        """Rotate ``qk`` [T, (heads + kv_heads) * head_dim] (row-strided view) in place with the
        bf16 tables ``cos``/``sin`` [max_pos, head_dim] (sin carries the rotate_half sign)."""
        if cos.shape[1] > MAX_HEAD_DIM or cos.shape[1] % 2:
            raise ValueError(f"rope: head_dim must be even and at most {MAX_HEAD_DIM}")
        self._rope(qk.data_ptr(), qk.stride(0), positions.data_ptr(), cos.data_ptr(),
                   sin.data_ptr(), qk.shape[0], heads, kv_heads, cos.shape[1])

    def store_kv(
        self, k_pool: torch.Tensor, v_pool: torch.Tensor, loc: torch.Tensor, k: torch.Tensor,
        v: torch.Tensor
    ) -> None:
        """``k_pool[loc] = k; v_pool[loc] = v`` for rows [T, width] (row-strided views) into
        pools [slots, width]; loc int64 [T]."""
        if k.dtype != k_pool.dtype or k.stride(1) != 1 or v.stride(1) != 1 or loc.stride(0) != 1:
            raise ValueError(f"store_kv: k, v must be {k_pool.dtype} rows of unit stride")
        self._store(k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), loc.data_ptr(),
                    k.shape[0], k.shape[1], k_pool.data_ptr(), v_pool.data_ptr(),
                    k_pool.stride(0))

    def decode_attention(
        self,
        q: torch.Tensor,
        k_pool: torch.Tensor,
        v_pool: torch.Tensor,
        idx: torch.Tensor,
        lens: torch.Tensor,
        heads: int,
        kv_heads: int,
        scale: float,
    ) -> torch.Tensor:
        """q [B, heads * d] (row-strided view); pools [slots, kv_heads * d]; idx [B, L] int64
        pool rows per request (padded), lens [B] int64. Returns [B, heads * d]."""
        b, width = q.shape
        if heads // kv_heads > MAX_GROUP or width // heads > MAX_HEAD_DIM:
            raise ValueError(f"decode_attention: at most {MAX_GROUP} query heads per kv head "
                             f"and head_dim {MAX_HEAD_DIM}")
        if q.dtype != k_pool.dtype or q.stride(1) != 1:
            raise ValueError(f"decode_attention: q must be {k_pool.dtype} rows of unit stride")
        out = torch.empty((b, width), dtype=q.dtype)
        self._attn(q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(),
                   k_pool.stride(0), idx.data_ptr(), idx.stride(0), lens.data_ptr(),
                   out.data_ptr(), width, b, heads, kv_heads, width // heads, scale)
        return out

    def argmax(self, x: torch.Tensor) -> torch.Tensor:
        """``x.argmax(-1)`` of float32 rows [R, N] with unit inner stride (one pass, no
        index tensor temporaries: several times faster than torch's on CPU)."""
        if x.dtype != torch.float32 or x.stride(1) != 1:
            raise ValueError("argmax: float32 rows of unit stride")
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self._argmax(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], out.data_ptr())
        return out

    def gemm_pack(self, w: torch.Tensor) -> torch.Tensor:
        """The panels of bf16 weight ``w`` [N, K] (unit inner stride) for ``gemm``."""
        if w.dtype != torch.bfloat16 or w.dim() != 2 or w.stride(1) != 1:
            raise ValueError("gemm_pack: a 2-D bf16 weight of unit inner stride")
        n, k = w.shape
        panels = torch.empty(((n + GEMM_NR - 1) // GEMM_NR, k, GEMM_NR), dtype=torch.bfloat16)
        self._gemm_pack(w.data_ptr(), w.stride(0), n, k, panels.data_ptr())
        return panels

    def gemm(self, x: torch.Tensor, panels: torch.Tensor, n: int,
             bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``bf16(x @ w.T + bias)`` for bf16 rows ``x`` [M, K] (unit inner stride), the panels of
        ``w`` [n, K] and an optional bf16 ``bias`` [n]; float32 sums in a fixed order per output,
        so a row's result does not depend on the other rows."""
        m, k = x.shape
        if x.dtype != torch.bfloat16 or x.stride(1) != 1 or panels.shape[1] != k:
            raise ValueError(
                f"gemm: x must be bf16 rows of unit stride and width {panels.shape[1]}")
        if bias is not None and (bias.dtype != torch.bfloat16 or not bias.is_contiguous()):
            raise ValueError("gemm: the bias must be a contiguous bf16 vector")
        out = torch.empty((m, n), dtype=torch.bfloat16)
        if m:
            self._gemm(x.data_ptr(), x.stride(0), m, panels.data_ptr(), n, k,
                       None if bias is None else bias.data_ptr(), out.data_ptr(), n)
        return out


_kernels: Optional[CpuKernels] = None
_tried = False
_enabled = envs.cpu_kernels  # tests switch it to compare both paths


def load() -> CpuKernels:
    """Build (if needed) and load the best library this CPU runs, or the one
    ``SGLANG_CPU_KERNEL_ISA`` names."""
    isa = kb.pick_isa(kb.cpu_features(), envs.cpu_kernel_isa)
    kernels = CpuKernels(kb.build(isa))
    logger.info("CPU kernels: %s build (%s)", isa.name, kernels.path.name)
    return kernels


def get() -> Optional[CpuKernels]:
    """The loaded kernels, or None (disabled or not buildable here: torch paths are used)."""
    global _kernels, _tried
    if not _enabled:
        return None
    if not _tried:
        _tried = True
        try:
            _kernels = load()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            logger.warning("CPU kernels unavailable, using torch ops instead: %s", e)
    return _kernels


def usable(*tensors: torch.Tensor) -> Optional[CpuKernels]:
    """The kernels if every tensor is a bf16 CPU tensor, else None."""
    for t in tensors:
        if t.dtype != torch.bfloat16 or t.device.type != "cpu":
            return None
    return get()


if __name__ == "__main__":
    sys.exit(kb.build_all())
