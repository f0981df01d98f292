"""`python -m nerfx.info`: what this nerfx build holds and which backend each op would pick.

`python -m nerfx.info --build` compiles the extension ahead of time when nerfx was installed
without it (`pip install .`), instead of at the first op that needs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import nerfx
import nerfx.ops  # noqa: F401  (importing the ops registers every backend in REGISTRY)
from nerfx import _ext
from nerfx.ops import chosen_backends


def report() -> str:
    lines = [f"nerfx {nerfx.__version__}  (python {platform.python_version()}, torch "
             f"{torch.__version__}, CUDA runtime {torch.version.cuda or 'none'})"]
    why = _ext.unavailable_reason()
    if why:
        lines.append(f"extension:  not available: {why}")
    else:
        info = _ext.build_info()
        cuda = f"yes, architectures {info['cuda_archs']}" if info["cuda"] else "no"
        lines.append(f"extension:  nerfx._C with CPU kernels (OpenMP: "
                     f"{'yes' if info['openmp'] else 'no'}); CUDA kernels: {cuda}")
        where = info.get("cache") or info["path"]
        lines.append(f"            {info['how']}, {where}")
        if info.get("reason"):
            why = f"            CUDA {'built' if info['cuda'] else 'left out'}: {info['reason']}"
            lines.append(why + (f"; to get it: {info['fix']}" if info.get("fix") else ""))
        lines.append(f"cpu loops:  {info.get('cpu_path', 'portable')}, Adam "
                     f"{info.get('adam_cpu_loop', 'portable')} (NERFX_CPU_PATH=portable forces "
                     "the portable ones)")
    lines.append(f"threads:    {torch.get_num_threads()} (torch.get_num_threads)")
    try:
        import triton

        interp = "on" if os.environ.get("TRITON_INTERPRET") == "1" else "off"
        lines.append(f"triton:     {triton.__version__} (interpreter {interp})")
    except ImportError:
        lines.append("triton:     not installed")
    devices = ["cpu"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(f"cuda:{i} {props.name} (sm_{props.major}{props.minor})")
    else:
        lines.append("GPU:        none visible")
    lines.append("devices:    " + "; ".join(devices))
    if os.environ.get("NERFX_BACKEND"):
        lines.append(f"NERFX_BACKEND={os.environ['NERFX_BACKEND']} overrides backend='auto'")
    lines.append("backend chosen by backend='auto':")
    picks = {dev: chosen_backends(dev) for dev in ("cpu", "cuda")}
    for name in picks["cpu"]:
        lines.append(f"  {name:<14} " + ", ".join(f"{dev} -> {picks[dev][name]}"
                                                  for dev in picks))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nerfx.info",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true",
                        help="compile the extension now if it was not built at install")
    args = parser.parse_args(argv)
    if args.build:
        start = time.perf_counter()
        why = _ext.unavailable_reason()
        if why:
            raise SystemExit(f"nerfx: the build failed: {why}")
        print(f"extension ready in {time.perf_counter() - start:.1f} s")
    print(report())


if __name__ == "__main__":
    main()
