"""The installed llama.cpp build runs on any x86-64 machine with AVX2: no AMX and no AVX-512 instructions.

A native build on a virtual CPU that lists AMX (or AVX-512) without letting processes use it dies with SIGILL at
the first decode; this test fails when such a build is installed (e.g. a wheel that pip cached from a native
build), so it cannot come back silently. `MEBOT_LLAMA_NATIVE=1 make setup` builds natively on purpose: then the
test is skipped with the reason.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# AMX tile instructions, and any use of a 512-bit register (AVX-512)
FORBIDDEN = re.compile(r"\b(tileloadd\w*|tilestored|tdpb\w+|tdpfp16ps|tilezero|ldtilecfg)\b|%zmm\d")


def installed_llama_libraries() -> list[Path]:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    assert spec is not None and spec.submodule_search_locations, "llama_cpp is not installed"
    lib_dir = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return sorted({p.resolve() for p in lib_dir.glob("*.so*") if p.is_file()})


def installed_build_name() -> str:
    marker = Path(sys.prefix) / ".llama-cpp-python-build"
    return marker.read_text().strip() if marker.is_file() else "unknown"


@pytest.mark.full  # disassembles every llama.cpp library (seconds to minutes)
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the instruction baseline is for x86-64")
def test_llama_cpp_libraries_contain_no_amx_or_avx512_instructions() -> None:
    if os.environ.get("MEBOT_LLAMA_NATIVE") == "1" or installed_build_name().startswith("native"):
        pytest.skip("a native llama.cpp build was asked for (MEBOT_LLAMA_NATIVE=1)")
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to check the llama.cpp build"
    libraries = installed_llama_libraries()
    names = {p.name.split(".so")[0] for p in libraries}
    assert "libggml-cpu" in names, f"no libggml-cpu among {sorted(names)}"
    offenders = {}
    for library in libraries:
        listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(library)], capture_output=True, text=True)
        assert listing.returncode == 0, listing.stderr[-500:]
        hits = [line.strip() for line in listing.stdout.splitlines() if FORBIDDEN.search(line)]
        if hits:
            offenders[library.name] = (len(hits), hits[:3])
    assert not offenders, f"llama.cpp was built with AMX/AVX-512 instructions: {offenders}; rebuild: make setup"


def test_the_forbidden_pattern_catches_amx_and_avx512_and_spares_avx2() -> None:
    assert FORBIDDEN.search("  1a: tileloadd (%rsi,%rdx,1),%tmm0")
    assert FORBIDDEN.search("  2b: tdpbssd %tmm2,%tmm1,%tmm0")
    assert FORBIDDEN.search("  3c: vmovups (%rax),%zmm1")
    assert not FORBIDDEN.search("  4d: vfmadd231ps %ymm2,%ymm1,%ymm0")
    assert not FORBIDDEN.search("  5e: vpdpbusd %ymm2,%ymm1,%ymm0 # a label: tile_loader")


@pytest.mark.full  # loads the real models
def test_smoke_generates_and_embeds_in_a_child_process() -> None:
    """`mebot smoke` (what `make setup` ends with): the bundled GGUF loads and generates, MiniLM embeds."""
    result = subprocess.run(
        [sys.executable, "-m", "mebot.pipeline.cli", "smoke"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"chat \S+: '.+'", result.stdout), result.stdout
    assert "384 dims" in result.stdout
    assert "mebot smoke: ok" in result.stdout
