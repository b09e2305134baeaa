"""Which build of the CPU kernels gets loaded (``sglang/srt/layers/cpu_kernel_build.py`` and
``cpu_kernels.py``).

The library is built per instruction set and cached in a directory that may be shared, or baked
into an image that then runs on another CPU: a build using an instruction this CPU lacks would
kill the scheduler with SIGILL, which no ``except`` catches. So the loader must pick a build the
CPU runs, refuse a file that declares anything else, never reuse a build of another compiler or
of other sources, and fall back to torch ops where nothing can be built.
"""

from __future__ import annotations

import shutil

import pytest

from sglang.srt.layers import cpu_kernel_build, cpu_kernels

X86 = len(cpu_kernel_build.ISAS) > 1
AVX2 = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "abm", "movbe"}
ZEN3 = frozenset(AVX2 | {"sha_ni", "vaes"})
ZEN4 = frozenset(ZEN3 | {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
                         "avx512_bf16", "avx512_vnni"})
SAPPHIRE_RAPIDS = frozenset(ZEN4 | {"avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"})
OLD = frozenset({"sse4_2", "avx"})  # Sandy Bridge: no AVX2
HERE = cpu_kernel_build.cpu_features()
needs_x86 = pytest.mark.skipif(not X86, reason="one portable build off x86: nothing to pick")


def _replace(path, data: bytes) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    tmp.replace(path)


def _compiler_works() -> bool:
    try:
        return cpu_kernel_build.build(cpu_kernel_build.pick_isa(HERE)).exists()
    except (OSError, RuntimeError):
        return False


needs_cc = pytest.mark.skipif(not _compiler_works(), reason="no C compiler here: nothing builds")


@needs_x86
def test_each_cpu_kind_gets_the_best_build_it_runs():
    pick = cpu_kernel_build.pick_isa
    assert pick(SAPPHIRE_RAPIDS).name == "avx512" and pick(ZEN4).name == "avx512"
    assert pick(ZEN3).name == "avx2" and pick(OLD).name == "portable"
    assert pick(ZEN4, "avx2").name == "avx2" and pick(ZEN4, "portable").name == "portable"
    with pytest.raises(RuntimeError, match="lacks avx512bw avx512dq avx512f avx512vl"):
        pick(ZEN3, "avx512")
    with pytest.raises(RuntimeError, match="not a build here"):
        pick(ZEN4, "amx")
    for isa in cpu_kernel_build.ISAS:  # what a build declares is what its CPUs are checked for
        assert isa.requires <= ZEN4


@needs_x86
@needs_cc
@pytest.mark.skipif("avx2" not in HERE, reason="loading the AVX2 build needs an AVX2 CPU")
def test_build_for_features_this_cpu_lacks_is_never_loaded(tmp_path, monkeypatch):
    """A cache holding every build (as ``make install`` leaves it) and a planted file claiming
    AMX: on a CPU without AVX-512 (this one, minus its AVX-512 flags) the AVX2 build loads, and
    the others are refused before ``dlopen``, with the missing extensions named."""
    builds = {isa.name: cpu_kernel_build.build(isa) for isa in cpu_kernel_build.ISAS}
    monkeypatch.setenv("SGLANG_CPU_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("SGLANG_CPU_KERNEL_ISA", "auto")
    for isa in cpu_kernel_build.ISAS:
        shutil.copy(builds[isa.name], cpu_kernel_build.library_path(isa))
    pretend = frozenset(f for f in HERE if not f.startswith("avx512"))
    monkeypatch.setattr(cpu_kernel_build, "cpu_features", lambda: pretend)

    lib = cpu_kernels.load()
    assert lib.path == cpu_kernel_build.library_path(cpu_kernel_build.pick_isa(ZEN3))
    assert lib.compiled_for <= pretend and "avx2" in lib.compiled_for and lib.gemm_supported
    with pytest.raises(RuntimeError, match="avx512bw avx512dq avx512f avx512vl, which this CPU"):
        cpu_kernels.CpuKernels(builds["avx512"])
    monkeypatch.setenv("SGLANG_CPU_KERNEL_ISA", "avx512")
    with pytest.raises(RuntimeError, match="this CPU lacks avx512"):
        cpu_kernels.load()

    # a file under the AVX2 build's name that declares AMX (say, copied from another machine)
    # (replaced, never rewritten in place: the loaded build is mapped, and truncating a mapped
    # library kills this process with SIGBUS when it next touches a page, e.g. at exit)
    avx2_path = cpu_kernel_build.library_path(cpu_kernel_build.pick_isa(ZEN3))
    _replace(avx2_path, builds["avx2"].read_bytes().replace(
        b"sglang-kernel-isa:", b"sglang-kernel-isa: amx_tile"))
    monkeypatch.setenv("SGLANG_CPU_KERNEL_ISA", "auto")
    with pytest.raises(RuntimeError, match="built for amx_tile"):
        cpu_kernels.load()
    _replace(avx2_path, b"\x7fELF not ours")
    with pytest.raises(RuntimeError, match="declares no instruction set"):
        cpu_kernels.load()


@needs_cc
def test_build_of_another_compiler_or_source_is_not_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SGLANG_CPU_KERNEL_DIR", str(tmp_path))
    isa = cpu_kernel_build.ISAS[-1]  # portable: the quickest to build
    ours = cpu_kernel_build.build(isa)
    real_id = cpu_kernel_build._compiler_id
    monkeypatch.setattr(cpu_kernel_build, "_compiler_id", lambda cc: real_id(cc) + " 99.1")
    other_compiler = cpu_kernel_build.library_path(isa)
    header = tmp_path / "extra.h"
    header.write_text("// another version of the sources\n")
    monkeypatch.setattr(cpu_kernel_build, "_HEADERS", [*cpu_kernel_build._HEADERS, header])
    other_source = cpu_kernel_build.library_path(isa)
    assert len({ours, other_compiler, other_source}) == 3
    assert cpu_kernel_build.build(isa) == other_source and other_source.exists()


def test_without_a_compiler_torch_ops_are_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SGLANG_CPU_KERNEL_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(cpu_kernels, "_enabled", True)
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_kernels", None)
    assert cpu_kernels.get() is None
    assert "using torch ops instead" in caplog.text


@needs_cc
def test_install_builds_every_instruction_set(capsys):
    """``make install`` runs this: an image built on one CPU must find a build for another."""
    assert cpu_kernel_build.build_all() == 0
    printed = capsys.readouterr().out
    for isa in cpu_kernel_build.ISAS:
        path = cpu_kernel_build.library_path(isa)
        assert f"{isa.name}: {path}" in printed
        assert cpu_kernel_build.compiled_for(path) == isa.requires
