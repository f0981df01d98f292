"""The build's CUDA decision (nerfx/_build.py) on fake toolkits, and the first-use build's cache."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from nerfx import _build
from nerfx._build import BuildError, Toolkit, decide_cuda, find_toolkit


def make_toolkit(root: Path, version: str = "13.0", cudart: bool = True,
                 headers: bool = True) -> Path:
    """A fake CUDA toolkit: bin/nvcc answers --version and -dryrun as the real one does."""
    (root / "bin").mkdir(parents=True)
    nvcc = root / "bin" / "nvcc"
    here = root / "bin"
    nvcc.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --version) echo "Cuda compilation tools, release {version}, V1";;\n'
        f'  -dryrun) echo "#$ _HERE_={here}"; echo "#$ TOP={here}/..";; esac\n')
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IEXEC)
    if headers:
        (root / "include").mkdir()
        (root / "include" / "cuda_runtime.h").write_text("")
    if cudart:
        (root / "lib64").mkdir()
        (root / "lib64" / "libcudart.so").write_text("")
    return root


def wrapper(bin_dir: Path, target: Path) -> Path:
    """A script named nvcc outside the toolkit that runs the real one (as /usr/local/bin/nvcc)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvcc"
    script.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def which_from(path: Path | None):
    return lambda name: str(path) if path is not None else None


def found(tmp_path: Path, environ=None, nvcc: Path | None = None, search_path=()) -> Toolkit:
    return find_toolkit(environ or {}, search_path, which=which_from(nvcc),
                        default_roots=[str(tmp_path / "no-default")])


def test_wrapper_script_on_path_finds_the_real_toolkit(tmp_path):
    """The case that broke README command 1: nvcc on PATH is a wrapper outside the toolkit."""
    root = make_toolkit(tmp_path / "cuda-13.0")
    toolkit = found(tmp_path, nvcc=wrapper(tmp_path / "usr-local" / "bin", root / "bin" / "nvcc"))
    assert toolkit.root == str(root.resolve())
    assert toolkit.nvcc_version == "13.0" and toolkit.has_headers
    assert toolkit.cudart == str(root.resolve() / "lib64" / "libcudart.so")
    assert decide_cuda(toolkit, "13.0").build


def test_symlinked_root_and_symlinked_nvcc_resolve(tmp_path):
    root = make_toolkit(tmp_path / "cuda-13.0")
    (tmp_path / "cuda").symlink_to(root)
    via_env = found(tmp_path, environ={"CUDA_HOME": str(tmp_path / "cuda")})
    assert via_env.root == str(root.resolve()) and via_env.found_by == "CUDA_HOME"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvcc").symlink_to(tmp_path / "cuda" / "bin" / "nvcc")
    via_link = found(tmp_path, nvcc=tmp_path / "bin" / "nvcc")
    assert via_link.root == str(root.resolve())


def test_cuda_home_wins_over_path(tmp_path):
    chosen = make_toolkit(tmp_path / "chosen", version="13.0")
    other = make_toolkit(tmp_path / "other", version="12.4")
    toolkit = found(tmp_path, environ={"CUDA_PATH": str(chosen)}, nvcc=other / "bin" / "nvcc")
    assert toolkit.root == str(chosen.resolve()) and toolkit.nvcc_version == "13.0"


def test_default_root_is_used_when_nothing_points_elsewhere(tmp_path):
    root = make_toolkit(tmp_path / "usr-local-cuda")
    toolkit = find_toolkit({}, (), which=which_from(None), default_roots=[str(root)])
    assert toolkit.root == str(root.resolve()) and decide_cuda(toolkit, "13.0").build


def test_no_toolkit_builds_cpu_kernels_and_says_how_to_get_cuda(tmp_path):
    toolkit = found(tmp_path)
    assert toolkit == Toolkit()
    decision = decide_cuda(toolkit, "13.0")
    assert not decision.build and "no CUDA toolkit found" in decision.reason
    assert "CUDA 13 toolkit" in decision.fix and "pip install" in decision.fix
    assert decision.message().startswith("nerfx: CPU kernels only (no CUDA toolkit found")
    with pytest.raises(BuildError, match="NERFX_BUILD_CUDA=1 but .*no CUDA toolkit found"):
        decide_cuda(toolkit, "13.0", forced="1")


def test_major_version_mismatch_is_refused(tmp_path):
    root = make_toolkit(tmp_path / "cuda-12.4", version="12.4")
    decision = decide_cuda(found(tmp_path, environ={"CUDA_HOME": str(root)}), "13.0")
    assert not decision.build
    assert "nvcc 12.4" in decision.reason and "torch's CUDA 13.0" in decision.reason
    assert "CUDA_HOME=/path/to/cuda-13" in decision.fix
    # A minor difference is fine: CUDA keeps compatibility within a major version.
    assert decide_cuda(found(tmp_path, environ={"CUDA_HOME": str(root)}), "12.8").build


def test_toolkit_without_cudart_uses_torchs_wheel_or_refuses(tmp_path):
    root = make_toolkit(tmp_path / "cuda", cudart=False)
    toolkit = found(tmp_path, environ={"CUDA_HOME": str(root)})
    assert toolkit.cudart is None
    decision = decide_cuda(toolkit, "13.0")
    assert not decision.build and "no libcudart" in decision.reason
    site = tmp_path / "site-packages"
    (site / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    (site / "nvidia" / "cu13" / "lib" / "libcudart.so.13").write_text("")
    with_wheel = found(tmp_path, environ={"CUDA_HOME": str(root)}, search_path=[str(site)])
    assert with_wheel.cudart.endswith("libcudart.so.13") and decide_cuda(with_wheel, "13.0").build
    # -lcudart needs an unversioned name: the build links through a libcudart.so in scratch.
    link_dir = _build.cudart_link_dir(with_wheel.cudart, tmp_path / "scratch")
    assert os.path.realpath(Path(link_dir) / "libcudart.so") == with_wheel.cudart


def test_toolkit_without_headers_is_refused(tmp_path):
    root = make_toolkit(tmp_path / "cuda", headers=False)
    decision = decide_cuda(found(tmp_path, environ={"CUDA_HOME": str(root)}), "13.0")
    assert not decision.build and "no CUDA headers" in decision.reason


def test_cpu_torch_and_forcing(tmp_path):
    root = make_toolkit(tmp_path / "cuda")
    toolkit = found(tmp_path, environ={"CUDA_HOME": str(root)})
    assert not decide_cuda(toolkit, None).build
    assert "torch is a CPU build" in decide_cuda(toolkit, None).reason
    with pytest.raises(BuildError, match="torch is a CPU build"):
        decide_cuda(toolkit, None, forced="1")
    skipped = decide_cuda(toolkit, "13.0", forced="0")
    assert not skipped.build and skipped.reason == "NERFX_BUILD_CUDA=0"
    assert decide_cuda(toolkit, "13.0", forced="1").build


def test_archs_default_without_a_gpu():
    assert _build.cuda_archs({}, gpu_visible=False) == _build.DEFAULT_CUDA_ARCHS
    assert _build.cuda_archs({}, gpu_visible=True) == ""
    assert _build.cuda_archs({"TORCH_CUDA_ARCH_LIST": "9.0"}, gpu_visible=False) == "9.0"


def test_sources_digest_changes_with_any_header(tmp_path):
    csrc = tmp_path / "csrc"
    (csrc / "include").mkdir(parents=True)
    (csrc / "sources.txt").write_text("# list\ncsrc/a.cpp\n\ncsrc/b.cu\n")
    (csrc / "include" / "m.h").write_text("int x;")
    before = _build.sources_digest(csrc)
    (csrc / "include" / "m.h").write_text("int y;")
    assert _build.sources_digest(csrc) != before
    assert _build.read_sources(csrc) == ["csrc/a.cpp", "csrc/b.cu"]


def test_failed_first_use_build_warns_once_and_auto_falls_back(monkeypatch):
    import torch

    from nerfx import _ext
    from nerfx.ops import hash_encode
    from nerfx.ops._dispatch import BackendError
    from nerfx.ref import hash_encode as reference

    def broken() -> None:
        raise RuntimeError("Error building extension 'nerfx_C': g++: not found")

    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", None)
    monkeypatch.setattr(_ext, "_import_or_build", broken)
    from tests.ops.test_hashgrid import config, make_inputs

    cfg = config(2)
    x, params = make_inputs(5, 3, cfg)
    with pytest.warns(RuntimeWarning, match="g\\+\\+: not found.*PyTorch reference") as record:
        out = hash_encode(x, params, backend="auto", **cfg)
        hash_encode(x, params, backend="auto", **cfg)
    assert len(record) == 1
    torch.testing.assert_close(out, reference(x, params, **cfg))
    with pytest.raises(BackendError, match="g\\+\\+: not found"):
        hash_encode(x, params, backend="cpu", **cfg)


def test_first_use_cache_compiles_once_under_concurrency(tmp_path, monkeypatch):
    """Two callers at once: one compiles under the lock, the other waits and reuses the result;
    a failed compile leaves nothing half-written in the cache, and the next call compiles."""
    import threading
    import time
    import types

    from nerfx import _ext

    calls = []

    def fake_load(name, sources, build_directory, **kwargs):
        calls.append(build_directory)
        if len(calls) == 1 and fail_first:
            raise RuntimeError("compiler crashed")
        time.sleep(0.3)                               # long enough for the other to wait
        out = Path(build_directory) / f"{name}.so"
        out.write_bytes(b"library bytes")
        return str(out)

    monkeypatch.setenv("NERFX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(_ext, "_cpp_extension", lambda: types.SimpleNamespace(
        load=fake_load, CUDA_HOME=None))
    monkeypatch.setattr(_ext, "_decide", lambda: (Toolkit(), _build.CudaDecision(False, "test")))

    fail_first = True
    with pytest.raises(RuntimeError, match="compiler crashed"):
        _ext.build_cached()
    assert not list((tmp_path / "cache" / "kernels").glob("*/nerfx_C.so"))
    assert not list((tmp_path / "cache" / "kernels").glob("*.build-*"))

    fail_first, calls[:] = False, []
    results = []
    threads = [threading.Thread(target=lambda: results.append(_ext.build_cached()))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    (path_a, built_a), (path_b, built_b) = results
    assert path_a == path_b and {built_a, built_b} == {True, False}
    assert path_a.read_bytes() == b"library bytes"
    assert (path_a.parent / "build.json").is_file()
    assert not list(path_a.parent.parent.glob("*.build-*"))      # no scratch left behind
    assert _ext.build_cached() == (path_a, False)                  # later: from the cache


def test_string_macros_survive_the_first_use_builds_shell(tmp_path):
    """cpp_extension.load writes the flags into a ninja file whose commands run in a shell: the
    CUDA archs macro must reach the compiler as a C string literal, ';' and quotes included."""
    import subprocess

    toolkit = make_toolkit(tmp_path / "cuda")
    flags = _build.build_flags(Path(_build.__file__).parent / "_csrc"
                               if (Path(_build.__file__).parent / "_csrc").is_dir()
                               else Path(__file__).parents[1] / "csrc", True,
                               found(tmp_path, {"CUDA_HOME": str(toolkit)}), [],
                               "8.0;9.0+PTX", tmp_path / "cudart")
    line = " ".join(flags.define_args(shell=True))
    echoed = subprocess.run(["sh", "-c", f"printf '%s\\n' {line}"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert '-DNERFX_CUDA_ARCHS="8.0;9.0+PTX"' in echoed
    assert echoed == flags.define_args()  # the shell hands the compiler the unquoted list


def test_no_fma_contraction_on_either_side(tmp_path):
    """The shared headers' math must round the same on the CPU and the GPU: g++ gets
    -ffp-contract=off and nvcc -fmad=false (nvcc fuses a * b + c by default), in setup.py's and
    the first-use build's flags alike (both come from build_flags), and in CMakeLists.txt."""
    root = Path(__file__).parents[1]
    toolkit = found(tmp_path, {"CUDA_HOME": str(make_toolkit(tmp_path / "cuda"))})
    csrc = root / "csrc" if (root / "csrc").is_dir() else Path(_build.__file__).parent / "_csrc"
    flags = _build.build_flags(csrc, True, toolkit, [], "9.0", tmp_path / "cudart")
    assert "-ffp-contract=off" in flags.cxx and "-fmad=false" in flags.nvcc
    cpu_only = _build.build_flags(csrc, False, toolkit, [], "9.0", tmp_path / "cudart")
    assert "-ffp-contract=off" in cpu_only.cxx and not cpu_only.nvcc
    cmake = root / "CMakeLists.txt"
    if cmake.exists():
        text = cmake.read_text()
        assert "-ffp-contract=off" in text and "COMPILE_LANGUAGE:CUDA>:-fmad=false" in text


def test_loaded_libstdcxx_is_read_from_the_process_maps(tmp_path):
    """The shared libstdc++ named to the linker is the one the process has mapped (paths with
    spaces kept; lines without a path, or a path that is gone, skipped)."""
    lib = tmp_path / "dir with space" / "libstdc++.so.6.0.33"
    lib.parent.mkdir()
    lib.write_bytes(b"")
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f01 r--p 00000000 00:00 0 \n"
                    "7f01-7f02 r-xp 00000000 08:01 12 /gone/libstdc++.so.6.0.30\n"
                    f"7f02-7f03 r-xp 00001000 08:01 13                 {lib}\n")
    assert _build.loaded_libstdcxx(maps) == str(lib)
    assert _build.loaded_libstdcxx(tmp_path / "no such file") is None
    maps.write_text("7f00-7f01 r--p 00000000 00:00 0                  [heap]\n")
    assert _build.loaded_libstdcxx(maps) is None
    root = Path(__file__).parents[1]
    csrc = root / "csrc" if (root / "csrc").is_dir() else Path(_build.__file__).parent / "_csrc"
    flags = _build.build_flags(csrc, False, Toolkit(), [], "", tmp_path, libstdcxx=str(lib))
    assert flags.ldflags[-1] == str(lib)


def test_the_extension_links_the_shared_libstdcxx_torch_uses():
    """A second, static libstdc++ inside nerfx._C has locale facet ids of its own: the first
    error message that prints a number (`x must have 3 columns, got 4`) then crashes the
    process instead of raising (it did, on the GPU machine's toolchain)."""
    import subprocess

    import torch

    from nerfx import _ext

    for tool in ("readelf", "nm"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (binutils) is not installed")
    library = Path(_ext.load().__file__)
    dynamic = subprocess.run(["readelf", "-d", str(library)], capture_output=True, text=True,
                             check=True).stdout
    assert re.search(r"NEEDED.*\[libstdc\+\+\.so", dynamic), dynamic
    defined = subprocess.run(["nm", "-D", "--defined-only", str(library)], capture_output=True,
                             text=True, check=True).stdout
    assert "_ZNSt6locale" not in defined  # std::locale's own members: libstdc++ is inside
    with pytest.raises(RuntimeError, match=r"got \[5, 4\]"):
        torch.ops.nerfx.hash_encode(torch.zeros(5, 4), torch.zeros(16, 2), [0, 16], [2], 2)
