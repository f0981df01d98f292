"""How nerfx._C is built: which CUDA toolkit, whether to compile the CUDA kernels, and the flags.

One place for the build decision and the compiler switches, used by both setup.py (at install)
and nerfx._ext (compiling on first use). It imports no torch at module level, so setup.py can load
it by path. `find_toolkit` looks at the machine; `decide_cuda` is a pure function of what was
found, unit-tested with fake toolkits in tests/test_build.py.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

# CUDA architectures compiled when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible: sm_80
# cubins also run on 8.6/8.9; PTX of 9.0 is JIT-compiled by the driver for newer GPUs.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# Where nvcc's own installation lies when nothing points elsewhere (torch's default too).
DEFAULT_TOOLKIT_ROOTS = ("/usr/local/cuda",)
FORCE_VAR = "NERFX_BUILD_CUDA"


class BuildError(RuntimeError):
    """NERFX_BUILD_CUDA=1 was set but the CUDA kernels cannot be built."""


@dataclass(frozen=True)
class Toolkit:
    """What the machine offers for a CUDA build (all None/False when no toolkit was found)."""

    root: str | None = None            # the toolkit's real root (symlinks and wrappers followed)
    found_by: str = ""                 # how: "CUDA_HOME", "the nvcc on PATH, /usr/bin/nvcc", ...
    nvcc_version: str | None = None    # "13.0", from `nvcc --version`
    has_headers: bool = False          # include/cuda_runtime.h under the root
    cudart: str | None = None          # a libcudart to link against (toolkit's or torch's wheel)


@dataclass(frozen=True)
class CudaDecision:
    build: bool
    reason: str                        # one line: what was found, or what was missing
    fix: str = ""                      # the command that gets the CUDA kernels ("" when built)

    def message(self) -> str:
        if self.build:
            return f"nerfx: compiling the CUDA kernels: {self.reason}"
        tail = f"; to get them: {self.fix}" if self.fix else ""
        return f"nerfx: CPU kernels only ({self.reason}){tail}"


def _major(version: str | None) -> str | None:
    return version.split(".")[0] if version else None


def decide_cuda(toolkit: Toolkit, torch_cuda: str | None, forced: str | None = None
                ) -> CudaDecision:
    """Whether to compile the CUDA kernels; raises BuildError when forced=="1" and one is missing.

    torch_cuda: torch.version.cuda ("13.0", or None for a CPU build of torch).
    forced: the value of NERFX_BUILD_CUDA ("0", "1" or None for automatic).
    """
    if forced == "0":
        return CudaDecision(False, f"{FORCE_VAR}=0")
    fix_root = f"CUDA_HOME=/path/to/cuda-{_major(torch_cuda) or 'X'}"
    reinstall = "pip install --no-build-isolation -e ."
    missing: tuple[str, str] | None = None
    if torch_cuda is None:
        missing = ("torch is a CPU build",
                   f"pip install torch (a CUDA build), then {reinstall}")
    elif toolkit.root is None:
        missing = ("no CUDA toolkit found: CUDA_HOME and CUDA_PATH unset, no nvcc on PATH, "
                   f"no {' or '.join(DEFAULT_TOOLKIT_ROOTS)}",
                   f"install the CUDA {_major(torch_cuda)} toolkit, then {fix_root} {reinstall}")
    elif toolkit.nvcc_version is None:
        missing = (f"no working nvcc in {toolkit.root}/bin (found by {toolkit.found_by})",
                   f"{fix_root} {reinstall}")
    elif _major(toolkit.nvcc_version) != _major(torch_cuda):
        missing = (f"nvcc {toolkit.nvcc_version} in {toolkit.root} does not match torch's CUDA "
                   f"{torch_cuda}", f"{fix_root} {reinstall}")
    elif not toolkit.has_headers:
        missing = (f"no CUDA headers (include/cuda_runtime.h) in {toolkit.root}",
                   f"{fix_root} {reinstall}")
    elif toolkit.cudart is None:
        missing = (f"no libcudart to link against in {toolkit.root} or torch's nvidia wheels",
                   f"{fix_root} {reinstall}")
    if missing is None:
        return CudaDecision(True, f"CUDA {toolkit.nvcc_version} toolkit at {toolkit.root} "
                                  f"(found by {toolkit.found_by}), torch CUDA {torch_cuda}")
    decision = CudaDecision(False, missing[0], missing[1])
    if forced == "1":
        raise BuildError(f"{FORCE_VAR}=1 but the CUDA kernels cannot be built: {missing[0]}; "
                         f"fix: {missing[1]}")
    return decision


def _nvcc_version(nvcc: str, run: Callable[[list[str]], str]) -> str | None:
    try:
        out = run([nvcc, "--version"])
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return f"{found.group(1)}.{found.group(2)}" if found else None


def _nvcc_home(nvcc: str, run: Callable[[list[str]], str]) -> str | None:
    """The bin folder of the nvcc that `nvcc` really runs (a wrapper script execs another one).

    nvcc's dry run prints its own location as `#$ _HERE_=<bin>` without compiling anything.
    """
    try:
        out = run([nvcc, "-dryrun", "-c", "nerfx_probe.cu", "-o", os.devnull])
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^#\$ _HERE_=(.+)$", out, re.MULTILINE)
    return os.path.realpath(found.group(1).strip()) if found else None


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _find_cudart(root: str, wheel_lib_dirs: Iterable[str]) -> str | None:
    """A libcudart.so under the toolkit, else a versioned one from torch's nvidia wheels."""
    for sub in ("lib64", "lib", "targets/*/lib"):
        for lib_dir in sorted(glob.glob(os.path.join(root, sub))):
            candidate = os.path.join(lib_dir, "libcudart.so")
            if os.path.exists(candidate):
                return candidate
    for lib_dir in wheel_lib_dirs:
        found = sorted(glob.glob(os.path.join(lib_dir, "libcudart.so*")))
        if found:
            return found[0]
    return None


def wheel_cuda_dirs(search_path: Iterable[str], what: str) -> list[str]:
    """Folders of torch's pip CUDA dependencies (site-packages/nvidia/*/<what>)."""
    found: list[str] = []
    for site in search_path:
        for pattern in ("nvidia/cu*", "nvidia/cuda_runtime", "nvidia/*"):
            found += [p for p in glob.glob(os.path.join(site, pattern, what)) if os.path.isdir(p)]
    return sorted(set(found))


def find_toolkit(environ: Mapping[str, str], search_path: Iterable[str] = (),
                 which: Callable[[str], str | None] = shutil.which,
                 run: Callable[[list[str]], str] = _run,
                 default_roots: Iterable[str] = DEFAULT_TOOLKIT_ROOTS) -> Toolkit:
    """The CUDA toolkit a build would use: CUDA_HOME/CUDA_PATH, else the real home of the nvcc
    on PATH (through symlinks and wrapper scripts), else a default root."""
    root, found_by = None, ""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if environ.get(var):
            root, found_by = os.path.realpath(environ[var]), var
            break
    if root is None:
        nvcc = which("nvcc")
        if nvcc:
            home = _nvcc_home(nvcc, run) or os.path.dirname(os.path.realpath(nvcc))
            root, found_by = os.path.dirname(home), f"the nvcc on PATH, {nvcc}"
    if root is None:
        for candidate in default_roots:
            if os.path.exists(os.path.join(candidate, "bin", "nvcc")):
                root, found_by = os.path.realpath(candidate), candidate
                break
    if root is None:
        return Toolkit()
    nvcc_path = os.path.join(root, "bin", "nvcc")
    version = _nvcc_version(nvcc_path, run) if os.path.exists(nvcc_path) else None
    include_dirs = [os.path.join(root, "include")]
    include_dirs += glob.glob(os.path.join(root, "targets/*/include"))
    headers = any(os.path.exists(os.path.join(d, "cuda_runtime.h")) for d in include_dirs)
    cudart = _find_cudart(root, wheel_cuda_dirs(search_path, "lib"))
    return Toolkit(root, found_by, version, headers, cudart)


@dataclass
class BuildFlags:
    """Everything the compiler and linker are given, the same for setup.py and first-use builds."""

    sources: list[str]                   # absolute paths
    include_dirs: list[str]
    macros: dict[str, str | None] = field(default_factory=dict)
    # -ffp-contract=off: a * b + c stays two roundings on every CPU (GCC would fuse it into an
    # FMA where the target has one, e.g. aarch64), so the CPU kernels keep matching the
    # references bit for bit where their comments say they do.
    cxx: list[str] = field(default_factory=lambda: ["-O3", "-fopenmp", "-ffp-contract=off"])
    nvcc: list[str] = field(default_factory=list)
    ldflags: list[str] = field(default_factory=lambda: ["-fopenmp"])
    library_dirs: list[str] = field(default_factory=list)

    def define_args(self, shell: bool = False) -> list[str]:
        """-D flags; shell=True quotes each for a shell command line, which is how
        torch.utils.cpp_extension.load's ninja file runs them (unquoted, the string macro
        NERFX_CUDA_ARCHS="8.0;9.0+PTX" would lose its quotes and split at the ';')."""
        args = [f"-D{k}" if v is None else f"-D{k}={v}" for k, v in self.macros.items()]
        return [shlex.quote(a) for a in args] if shell else args


def read_sources(csrc: Path) -> list[str]:
    """csrc/sources.txt: the sources of nerfx._C, relative to the folder above csrc."""
    lines = (csrc / "sources.txt").read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def cudart_link_dir(cudart: str, scratch: Path) -> str:
    """A folder where `-lcudart` finds the chosen libcudart (torch's wheels ship only the
    versioned libcudart.so.N, so a libcudart.so link to it is made in scratch)."""
    if os.path.basename(cudart) == "libcudart.so":
        return os.path.dirname(cudart)
    scratch.mkdir(parents=True, exist_ok=True)
    link = scratch / "libcudart.so"
    if not link.exists():
        link.symlink_to(cudart)
    return str(scratch)


def loaded_libstdcxx(maps: Path = Path("/proc/self/maps")) -> str | None:
    """The shared libstdc++ this process has loaded (torch's, once torch is imported), or None
    where there is no /proc or no libstdc++ in it."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # address perms offset device inode [path]
        fields = line.split(maxsplit=5)
        path = fields[5] if len(fields) == 6 else ""
        if os.path.basename(path).startswith("libstdc++.so") and os.path.exists(path):
            return path
    return None


def build_flags(csrc: Path, with_cuda: bool, toolkit: Toolkit, search_path: Iterable[str],
                archs: str, scratch: Path, libstdcxx: str | None = None) -> BuildFlags:
    # sources.txt names them from the checkout's root (csrc/...); csrc may be nerfx/_csrc.
    sources = [str(csrc / Path(s).relative_to("csrc")) for s in read_sources(csrc)]
    if not with_cuda:
        sources = [s for s in sources if not s.endswith(".cu")]
    flags = BuildFlags(sources, [str(csrc), str(csrc / "include")])
    # The shared libstdc++ torch runs on, named to the linker before the compiler's own
    # -lstdc++: a toolchain that links libstdc++ statically (the GPU machine's did) puts a second
    # copy in nerfx._C, whose locale facet ids differ from torch's, and the first error message
    # that prints a number (TORCH_CHECK(..., x.size(1))) crashes the process (RESULTS.md, GPU).
    libstdcxx = libstdcxx if libstdcxx is not None else loaded_libstdcxx()
    if libstdcxx:
        flags.ldflags.append(libstdcxx)
    if with_cuda:
        flags.macros = {"NERFX_WITH_CUDA": None, "NERFX_CUDA_ARCHS": f'"{archs}"'}
        # -fmad=false: nvcc contracts a * b + c into one FMA by default; the CPU build does not
        # (-ffp-contract=off above), so the shared headers' math (the hash grid's fractional
        # weights, compositing) would differ by an ulp between the backends, and a weight could
        # come out one ulp negative. Its cost is a bench row of the GPU check (RESULTS.md, GPU).
        flags.nvcc = ["-O3", "--expt-relaxed-constexpr", "-fmad=false"]
        # Headers of the CUDA libraries torch's pip dependencies ship (the toolkit may lack some).
        flags.include_dirs += wheel_cuda_dirs(search_path, "include")
        assert toolkit.cudart is not None
        flags.library_dirs.append(cudart_link_dir(toolkit.cudart, scratch))
    return flags


def cuda_archs(environ: Mapping[str, str], gpu_visible: bool) -> str:
    """TORCH_CUDA_ARCH_LIST when set; "" (torch compiles for the visible GPUs) when there are
    any; else DEFAULT_CUDA_ARCHS, so a machine without a GPU still builds CUDA kernels."""
    if environ.get("TORCH_CUDA_ARCH_LIST"):
        return environ["TORCH_CUDA_ARCH_LIST"]
    return "" if gpu_visible else DEFAULT_CUDA_ARCHS


def sources_digest(csrc: Path) -> str:
    """A hash of every file under csrc/ (sources, headers, the list) and of these build rules
    (their flags): the cache key's part."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(csrc)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                     prefix=path.name + ".") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
