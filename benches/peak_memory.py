"""Runs a module as `python -m` would, then prints its peak GPU memory (benches/gpu_check.sh).

usage: python benches/peak_memory.py MODULE [ARGS...]
e.g.   python benches/peak_memory.py nerfx.train --scene lego --fast
Prints `peak GPU memory: allocated X MiB, reserved Y MiB` (torch.cuda.max_memory_allocated /
max_memory_reserved) when the module used CUDA, else a line saying it did not; the module's own
exit status is kept.
"""

from __future__ import annotations

import runpy
import sys


def main() -> int:
    module, sys.argv = sys.argv[1], sys.argv[1:]
    status = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        import torch

        if torch.cuda.is_initialized():
            mib = 2**20
            print(f"peak GPU memory: allocated {torch.cuda.max_memory_allocated() / mib:.0f} MiB, "
                  f"reserved {torch.cuda.max_memory_reserved() / mib:.0f} MiB", flush=True)
        else:
            print("peak GPU memory: CUDA was not used", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
