"""Builds nerfx._C, the one C++/CUDA extension, from the sources listed in csrc/sources.txt.

CUDA kernels are compiled whenever torch is a CUDA build and a CUDA toolkit is found, also on a
machine without a GPU; NERFX_BUILD_CUDA=0/1 forces either way. Install with
`pip install --no-build-isolation -e .` after torch (see README.md).
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
# Architectures compiled when TORCH_CUDA_ARCH_LIST is unset and no GPU is visible.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0+PTX"


def read_sources() -> list[str]:
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def want_cuda(torch_cuda: str | None, cuda_home: str | None) -> bool:
    forced = os.environ.get("NERFX_BUILD_CUDA")
    if forced is not None:
        if forced == "1" and (torch_cuda is None or cuda_home is None):
            sys.exit("NERFX_BUILD_CUDA=1 needs a CUDA build of torch and a CUDA toolkit "
                     "(CUDA_HOME)")
        return forced == "1"
    return torch_cuda is not None and cuda_home is not None


def cuda_library_includes() -> list[str]:
    """Headers of the CUDA libraries that torch's pip dependencies ship (nvidia/*/include)."""
    found: list[str] = []
    for site in sys.path:
        for pattern in ("nvidia/cu*/include", "nvidia/*/include"):
            found += [p for p in glob.glob(os.path.join(site, pattern)) if os.path.isdir(p)]
    return sorted(set(found))


def extension_modules():
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit("nerfx builds against torch: install torch first, then "
                 "`pip install --no-build-isolation -e .` (see README.md)")

    sources = read_sources()
    with_cuda = want_cuda(torch.version.cuda, cpp_extension.CUDA_HOME)
    if not with_cuda:
        sources = [s for s in sources if not s.endswith(".cu")]
    include_dirs = [str(ROOT / "csrc"), str(ROOT / "csrc" / "include")]
    cxx = ["-O3", "-fopenmp"]
    macros = []
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "visible GPUs")
        macros = [("NERFX_WITH_CUDA", None), ("NERFX_CUDA_ARCHS", f'"{archs}"')]
        include_dirs += cuda_library_includes()
        ext = cpp_extension.CUDAExtension(
            "nerfx._C", sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "nerfx._C", sources, include_dirs=include_dirs, define_macros=macros,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    print(f"nerfx: building nerfx._C with CUDA={'yes' if with_cuda else 'no'}", flush=True)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = extension_modules()
setup(
    packages=["nerfx", "nerfx.kernels"] + [f"nerfx.{p}" for p in
                                            ("ops", "ref", "render", "models", "data")],
    package_dir={"nerfx": "nerfx", "nerfx.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
