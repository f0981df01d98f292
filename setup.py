"""Builds nerfx._C, the one C++/CUDA extension, from the sources listed in csrc/sources.txt.

With torch importable (`pip install --no-build-isolation -e .`, as README.md says), the kernels are
compiled now: the CPU kernels always, the CUDA kernels when nerfx/_build.py's decision finds a
toolkit that fits torch (NERFX_BUILD_CUDA=0/1 forces either way). In pip's isolated build torch is
not importable: nerfx then installs as pure Python and compiles the same sources, with the same
decision and flags, on first use (nerfx/_ext.py).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import setuptools
from setuptools import find_packages, setup

# pyproject.toml's `license = "MIT"` is a PEP 639 expression, which setuptools reads from 77.0
# on; older ones stop with a riddle about `project.license`. Python 3.11's venv ships 65.5, and
# `--no-build-isolation` builds with whatever is installed.
MIN_SETUPTOOLS = 77
if int(setuptools.__version__.split(".")[0]) < MIN_SETUPTOOLS:
    sys.exit(f"nerfx: building needs setuptools >= {MIN_SETUPTOOLS}, this environment has "
             f"{setuptools.__version__}: run `pip install 'setuptools>={MIN_SETUPTOOLS}'` first")

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def load_build_rules():
    """nerfx/_build.py, loaded by path: importing the package here would need its dependencies."""
    spec = importlib.util.spec_from_file_location("nerfx_build_rules", ROOT / "nerfx" / "_build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def extension_modules():
    try:
        import torch
    except ImportError:
        print("nerfx: torch is not importable in this build (pip's isolated build cannot see it): "
              "installing without compiled kernels, which compile on first use into a cache "
              "(`python -m nerfx.info --build` does it now; "
              "`pip install --no-build-isolation -e .` builds them at install)", flush=True)
        return [], {}

    rules = load_build_rules()
    # Quiet torch's import-time guess of CUDA_HOME from the nvcc on PATH: the rules find it.
    logger = logging.getLogger("torch.utils.cpp_extension")
    logger.setLevel(logging.ERROR)
    from torch.utils import cpp_extension
    logger.setLevel(logging.NOTSET)

    toolkit = rules.find_toolkit(os.environ, sys.path)
    try:
        decision = rules.decide_cuda(toolkit, torch.version.cuda, os.environ.get(rules.FORCE_VAR))
    except rules.BuildError as exc:
        sys.exit(str(exc))
    print(decision.message(), flush=True)
    archs = ""
    if decision.build:
        # Point torch's builder at the toolkit found (it would guess from the nvcc on PATH).
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"] = toolkit.root
        archs = rules.cuda_archs(os.environ, torch.cuda.is_available())
        if archs:
            os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    flags = rules.build_flags(CSRC, decision.build, toolkit, sys.path, archs or "visible GPUs",
                              ROOT / "build" / "cudart")
    common = dict(
        sources=[os.path.relpath(s, ROOT) for s in flags.sources],
        include_dirs=flags.include_dirs, define_macros=list(flags.macros.items()),
        library_dirs=flags.library_dirs, extra_link_args=flags.ldflags)
    if decision.build:
        ext = cpp_extension.CUDAExtension(
            "nerfx._C", extra_compile_args={"cxx": flags.cxx, "nvcc": flags.nvcc}, **common)
    else:
        ext = cpp_extension.CppExtension("nerfx._C", extra_compile_args={"cxx": flags.cxx},
                                         **common)
    record = {"how": "built at install", "cuda": decision.build, "reason": decision.reason,
              "fix": decision.fix, "torch": torch.__version__}

    class BuildExt(cpp_extension.BuildExtension.with_options(use_ninja=True)):
        """Also writes what the build decided beside the module, for `python -m nerfx.info`."""

        def run(self) -> None:
            super().run()
            built = Path(self.get_ext_fullpath(ext.name))
            rules.atomic_write_text(built.with_name("_C.build.json"), json.dumps(record))

    return [ext], {"build_ext": BuildExt}


def csrc_packages() -> dict[str, str]:
    """csrc/ ships inside the package as nerfx._csrc, so a first-use build has its sources."""
    folders = [CSRC] + sorted(p for p in CSRC.rglob("*") if p.is_dir())
    return {".".join(["nerfx._csrc", *p.relative_to(CSRC).parts]): str(p.relative_to(ROOT))
            for p in folders}


ext_modules, cmdclass = extension_modules()
csrc = csrc_packages()
setup(
    packages=find_packages(include=["nerfx", "nerfx.*"]) + ["nerfx.kernels", *csrc],
    package_dir={"nerfx": "nerfx", "nerfx.kernels": "kernels", **csrc},
    package_data={name: ["*.txt", "*.h", "*.cpp", "*.cu"] for name in csrc},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
