"""The CPU kernels build for arm64, where only their portable loops exist (no AVX2 loops, no SSE
batches in the CPU Adam): every CPU source of nerfx._C compiled by a cross compiler, with the
flags setup.py gives g++. Run where Debian's g++-aarch64-linux-gnu is installed (.ci/run installs
it); the portable loops' results are tested on every machine through NERFX_CPU_PATH=portable."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from nerfx import _build

CROSS = shutil.which("aarch64-linux-gnu-g++")
ROOT = Path(__file__).parents[1]
CSRC = ROOT / "csrc" if (ROOT / "csrc").is_dir() else Path(_build.__file__).parent / "_csrc"


def cpu_sources() -> list[str]:
    return [s for s in _build.read_sources(CSRC) if not s.endswith(".cu")]


@pytest.mark.skipif(CROSS is None, reason="no aarch64-linux-gnu-g++ (Debian package "
                    "g++-aarch64-linux-gnu; .ci/run installs it)")
@pytest.mark.parametrize("source", cpu_sources())
def test_cpu_source_compiles_for_arm64(source, tmp_path):
    from torch.utils.cpp_extension import include_paths

    flags = _build.build_flags(CSRC, False, _build.Toolkit(), [], "", tmp_path, libstdcxx="")
    path = CSRC / Path(source).relative_to("csrc")
    includes = [*flags.include_dirs, *include_paths(), sysconfig.get_paths()["include"]]
    # The C++ standard torch.utils.cpp_extension compiles extensions with.
    command = [CROSS, "-std=c++20", "-fsyntax-only", "-Wall", "-Werror", *flags.cxx,
               *flags.define_args(), "-DTORCH_API_INCLUDE_EXTENSION_H",
               "-DTORCH_EXTENSION_NAME=_C", *(f"-I{d}" for d in includes), str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{source} does not compile for arm64:\n{done.stderr[-4000:]}"


def test_arm64_has_no_x86_loops():
    """What makes the arm64 build portable: the macros that turn on the x86 loops are off for
    an aarch64 target (read from the cross compiler's preprocessor output)."""
    if CROSS is None:
        pytest.skip("no aarch64-linux-gnu-g++ (Debian package g++-aarch64-linux-gnu)")
    probe = ('#include "cpu_path.h"\n#include "adam/adam_simd.h"\n'
             "avx2_built NERFX_CPU_AVX2_BUILT\n#ifdef NERFX_ADAM_SIMD\nadam_simd 1\n#endif\n")
    from torch.utils.cpp_extension import include_paths

    includes = [CSRC, CSRC / "include", *include_paths()]
    done = subprocess.run([CROSS, "-std=c++20", "-E", "-P", *(f"-I{d}" for d in includes),
                           "-x", "c++", "-"], input=probe, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "avx2_built 0" in done.stdout and "adam_simd" not in done.stdout
