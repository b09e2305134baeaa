"""Building the bf16 CPU kernel library (``cpu_kernels.c`` and ``cpu_gemm.c``): which builds
exist, which one this CPU runs, where each lives, and compiling it.

The C files are compiled with the system C compiler (``$CC`` or ``gcc``, ``-O3 -fopenmp``) once
per instruction set of ``ISAS`` (explicit targets, never ``-march=native``), into
``$SGLANG_CPU_KERNEL_DIR`` (default ``~/.cache/sglang``), keyed by the sources, the flags and the
compiler's version; ``python -m sglang.srt.layers.cpu_kernels`` (``make install``) builds every
one the compiler can make (``build_all``). ``pick_isa`` chooses the best build this CPU runs (its
``/proc/cpuinfo`` flags; ``SGLANG_CPU_KERNEL_ISA`` forces one); every build declares the
extensions it was compiled with (a string in the library, ``compiled_for``), which the loader
(cpu_kernels.py) checks against the CPU's before loading it: a cache shared between machines,
or an image moved to an older CPU, gets a build it can run, never one that dies of SIGILL.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from sglang.srt.env import envs

_SRCS = [Path(__file__).with_name(name) for name in ("cpu_kernels.c", "cpu_gemm.c")]
_HEADERS = [Path(__file__).with_name("cpu_bf16.h")]  # part of the build key, not compiled alone
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=gnu11"]


@dataclass(frozen=True)
class Isa:
    """One build of the library: its compiler target flags and the CPU flags it needs."""

    name: str
    flags: tuple[str, ...]
    requires: frozenset[str]


_X86 = platform.machine().lower() in ("x86_64", "amd64")
_BASE = ("-march=x86-64", "-mtune=generic") if _X86 else ()  # the ABI's baseline: any x86-64
_AVX2 = ("avx", "avx2", "fma", "f16c", "bmi1", "bmi2")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512dq", "avx512vl")
ISAS = (  # best first: AVX-512 (Skylake-X, Zen 4, Sapphire Rapids), AVX2 + FMA (Haswell, Zen)
    Isa("avx512", (*_BASE, "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mavx512f",
                   "-mavx512bw", "-mavx512dq", "-mavx512vl"), frozenset(_AVX512)),
    Isa("avx2", (*_BASE, "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2"), frozenset(_AVX2)),
    Isa("portable", _BASE, frozenset()),
) if _X86 else (Isa("portable", (), frozenset()),)
_ISA_TAG = re.compile(rb"sglang-kernel-isa:([a-z0-9_ ]*);")


def _torch_capability_features() -> set[str]:
    """Where /proc/cpuinfo has no flags (not Linux): what torch's dispatcher found, which
    requires at least the same extensions as our builds of that name."""
    cap = torch.backends.cpu.get_cpu_capability().upper()
    return set(_AVX512) if cap.startswith("AVX512") else set(_AVX2) if cap == "AVX2" else set()


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """This CPU's instruction-set flags (/proc/cpuinfo's names; the kernel lists only those the
    OS has enabled)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset(_torch_capability_features())


def pick_isa(features: frozenset[str], wanted: str = "auto") -> Isa:
    """The best build whose needs ``features`` meet, or the ``wanted`` one if they meet it."""
    if wanted == "auto":
        return next(isa for isa in ISAS if isa.requires <= features)
    isa = next((isa for isa in ISAS if isa.name == wanted), None)
    if isa is None:
        names = ", ".join(i.name for i in ISAS)
        raise RuntimeError(f"SGLANG_CPU_KERNEL_ISA={wanted}: not a build here (auto, {names})")
    if not isa.requires <= features:
        missing = " ".join(sorted(isa.requires - features))
        raise RuntimeError(f"SGLANG_CPU_KERNEL_ISA={wanted}: this CPU lacks {missing}")
    return isa


@functools.lru_cache(maxsize=4)
def _compiler_id(cc: str) -> str:
    """The compiler's version banner and target: part of the build key, so that a cache shared
    with another compiler (another version, another target) never hands over its builds."""
    version = subprocess.run([cc, "--version"], check=True, capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[0]
    target = subprocess.run([cc, "-dumpmachine"], check=True, capture_output=True, text=True,
                            timeout=60).stdout.strip()
    return f"{version} {target}"


def library_path(isa: Isa) -> Path:
    """Where the build of ``isa`` for these sources, flags and compiler lives."""
    cc = os.environ.get("CC", "gcc")
    key = hashlib.sha256(
        b"".join(src.read_bytes() for src in [*_SRCS, *_HEADERS])
        + " ".join([cc, _compiler_id(cc), *_FLAGS, *isa.flags]).encode()
    ).hexdigest()[:16]
    return Path(envs.cpu_kernel_dir) / f"sglang_cpu_kernels_{isa.name}_{key}.so"


def build(isa: Isa, force: bool = False) -> Path:
    """Compile the C files for ``isa`` into one library (unless that build exists); its path."""
    cc = os.environ.get("CC", "gcc")
    lib = library_path(isa)
    if lib.exists() and not force:
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=lib.parent)
    os.close(fd)
    try:
        subprocess.run([cc, *_FLAGS, *isa.flags, *map(str, _SRCS), "-o", tmp, "-lm"],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(tmp, lib)  # atomic: concurrent builders each install a whole file
    except subprocess.CalledProcessError as e:
        names = " ".join(src.name for src in _SRCS)
        raise RuntimeError(f"{cc} failed on {names} ({isa.name}): {e.stderr.strip()[-2000:]}"
                           ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def compiled_for(path: Path) -> frozenset[str]:
    """The instruction-set extensions the library at ``path`` declares it may use (read from the
    file, without loading it)."""
    m = _ISA_TAG.search(path.read_bytes())
    if m is None:
        raise RuntimeError(f"{path} declares no instruction set: not a build of this version")
    return frozenset(m.group(1).decode().split())


def build_all() -> int:
    """Build every instruction set the compiler can target (an image made on one CPU then runs
    on another); 1 if the build this CPU would load failed."""
    mine = pick_isa(cpu_features()).name
    status = 0
    for isa in ISAS:
        try:
            print(f"{isa.name}: {build(isa)}")
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            print(f"{isa.name}: not built: {e}", file=sys.stderr)
            status |= isa.name == mine
    return status
