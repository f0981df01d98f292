"""Loads the compiled extension on first use, never at `import nerfx`.

Two ways in: the module nerfx._C built at install (`pip install --no-build-isolation -e .`), or,
when nerfx was installed without it (`pip install .`, whose isolated build cannot see torch), the
same sources compiled on first use with the same decision and flags (nerfx/_build.py) into a cache
keyed by torch's version, the CUDA decision and a hash of the sources. A missing compiler or a
failed build is reported when an op that needs the extension is called, with the error and the
fix, so the `torch` and `triton` backends keep working without it.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import shutil
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from nerfx import _build

BUILD_HINT = ("build it with `pip install --no-build-isolation -e .` from the nerfx checkout "
              "(torch must be installed first; see README.md)")
CACHE_VAR = "NERFX_CACHE"          # where first-use builds go (default ~/.cache/nerfx)
FIRST_USE_VAR = "NERFX_FIRST_USE_BUILD"  # "0": never compile on first use
LIBRARY_NAME = "nerfx_C"

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_on_load: list[Callable[[], None]] = []


class ExtensionUnavailable(RuntimeError):
    """nerfx._C is not built or failed to load."""


def on_load(hook: Callable[[], None]) -> None:
    """Runs hook (e.g. torch.library registrations) once the extension's ops exist."""
    with _lock:
        _on_load.append(hook)
        loaded = _module is not None
    if loaded:
        hook()


def load() -> ModuleType:
    """The extension module; raises ExtensionUnavailable with the reason and the fix."""
    global _module, _error
    if _module is not None:
        return _module
    with _lock:
        if _module is None and _error is None:
            try:
                _module = _import_or_build()
            except Exception as exc:  # noqa: BLE001 - any load failure is reported, not raised here
                _error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"nerfx: the compiled kernels are unavailable ({_error}); "
                              "backend='auto' uses the PyTorch reference or Triton instead",
                              RuntimeWarning, stacklevel=3)
            else:
                for hook in _on_load:
                    hook()
        if _module is None:
            raise ExtensionUnavailable(f"nerfx._C is unavailable ({_error}); {BUILD_HINT}")
        return _module


def _import_or_build() -> ModuleType:
    try:
        return importlib.import_module("nerfx._C")
    except ModuleNotFoundError as exc:
        if exc.name != "nerfx._C":
            raise
    if os.environ.get(FIRST_USE_VAR) == "0":
        raise ModuleNotFoundError(f"nerfx._C was not built at install and {FIRST_USE_VAR}=0")
    library, loaded = build_cached()
    if not loaded:
        torch.ops.load_library(str(library))
    module = types.ModuleType("nerfx._C")
    module.__file__ = str(library)
    return module


def source_dir() -> Path:
    """csrc/: beside the package in a checkout, inside it (nerfx/_csrc) in an installed wheel."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_csrc", package.parent / "csrc"):
        if (candidate / "sources.txt").is_file():
            return candidate
    raise FileNotFoundError(f"the C++ sources of nerfx (csrc/sources.txt) are not in {package} "
                            "or beside it; reinstall nerfx")


def cache_root() -> Path:
    base = os.environ.get(CACHE_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nerfx")
    return Path(base) / "kernels"


def _decide() -> tuple[_build.Toolkit, _build.CudaDecision]:
    toolkit = _build.find_toolkit(os.environ, sys.path)
    decision = _build.decide_cuda(toolkit, torch.version.cuda, os.environ.get(_build.FORCE_VAR))
    return toolkit, decision


def build_cached(verbose: bool = False) -> tuple[Path, bool]:
    """Compiles csrc/ for first use, or finds it compiled: (the shared library, whether this call
    compiled and so already loaded it).

    Safe under concurrent processes (torchrun): one compiles under a file lock while the others
    wait, and the library appears in the cache by an atomic rename, never half-written.
    """
    cpp_extension = _cpp_extension()
    csrc = source_dir()
    toolkit, decision = _decide()
    archs = _build.cuda_archs(os.environ, torch.cuda.is_available()) if decision.build else ""
    key = (f"torch{torch.__version__.replace('+', '-')}-"
           f"{'cuda' if decision.build else 'cpu'}-{_build.sources_digest(csrc)}")
    root = cache_root()
    final = root / key / f"{LIBRARY_NAME}.so"
    if final.exists():
        return final, False
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{key}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)       # released when this process ends, too
        if final.exists():                          # another process built it meanwhile
            return final, False
        scratch = root / f"{key}.build-{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir()
        took = "about 1 minute on 2 cores" + (", several with CUDA" if decision.build else "")
        what = "CPU and CUDA kernels" if decision.build else "CPU kernels"
        print(f"nerfx: compiling the {what} for first use ({took}; {decision.reason}); "
              f"cached in {final.parent}",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        if decision.build:
            cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = toolkit.root
            if archs:
                os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        flags = _build.build_flags(csrc, decision.build, toolkit, sys.path,
                                   archs or "visible GPUs", scratch / "cudart")
        defines = flags.define_args(shell=True)  # cpp_extension.load runs them through a shell
        ldflags = flags.ldflags + [f"-L{d}" for d in flags.library_dirs]
        try:
            built = cpp_extension.load(
                LIBRARY_NAME, flags.sources, extra_cflags=flags.cxx + defines,
                extra_cuda_cflags=flags.nvcc + defines, extra_ldflags=ldflags,
                extra_include_paths=flags.include_dirs, build_directory=str(scratch),
                with_cuda=decision.build, is_python_module=False, verbose=verbose)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)   # nothing half-built stays behind
            raise
        final.parent.mkdir(exist_ok=True)
        record = {"how": "compiled at first use", "cache": str(final.parent),
                  "cuda": decision.build, "reason": decision.reason, "fix": decision.fix,
                  "torch": torch.__version__, "seconds": round(time.perf_counter() - start, 1)}
        _build.atomic_write_text(final.parent / "build.json", json.dumps(record))
        os.replace(built, final)
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"nerfx: compiled in {record['seconds']:.0f} s", file=sys.stderr, flush=True)
    return final, True


def _cpp_extension() -> ModuleType:
    """torch.utils.cpp_extension, without its import-time warning about guessing CUDA_HOME from
    the nvcc on PATH (nerfx finds the toolkit itself, in nerfx/_build.py)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    return cpp_extension


def unavailable_reason() -> str | None:
    """None when the extension loads, else why not."""
    try:
        load()
    except ExtensionUnavailable as exc:
        return str(exc)
    return None


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether nerfx::<op> has a kernel for 'CPU' or 'CUDA' in this build."""
    if unavailable_reason() is not None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"nerfx::{op}", dispatch_key)


def build_info() -> dict:
    """{'cuda', 'cuda_archs', 'openmp', 'cpu_path', 'adam_cpu_loop'} of the loaded build
    ('cpu_path': the CPU loops taken now, "avx2" or "portable"; 'adam_cpu_loop': the float Adam
    step's, which may be "avx512" where the CPU has it), with what the build recorded:
    'how' (built at install / compiled at first use), 'reason' (why CUDA was or was not built)."""
    module = load()
    info = json.loads(torch.ops.nerfx.build_info())
    library = Path(module.__file__ or "")
    for record in (library.with_name("_C.build.json"), library.with_name("build.json")):
        if record.is_file():
            info.update({k: v for k, v in json.loads(record.read_text()).items() if k != "cuda"})
            break
    info.setdefault("how", "built at install")
    info["path"] = str(library)
    return info
