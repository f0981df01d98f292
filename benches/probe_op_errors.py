"""Do the compiled ops' argument checks raise, or crash the process? One subprocess per case.

A failing TORCH_CHECK must raise RuntimeError; a GPU machine's CUDA build has been seen to crash
instead (benches/RESULTS.md, GPU). Each case below runs alone, so the table says which calls
crash: only adam_step, or any op's TORCH_CHECK; before or after CUDA is initialised; on CPU or
CUDA tensors. Prints one line per case; exits 1 if any case crashed.
usage: python benches/probe_op_errors.py
"""

from __future__ import annotations

import subprocess
import sys

PRELUDE = """
import faulthandler, sys, torch
faulthandler.enable()
from nerfx import _ext
_ext.load()
dev = sys.argv[1]
if sys.argv[2] == "cuda-initialised":
    torch.cuda.init(); torch.zeros(1, device="cuda")
"""

# Each case: a call that must raise RuntimeError from a TORCH_CHECK in the compiled op.
CASES = {
    "adam_step, step int64": """
p = torch.zeros(8, device=dev); s = torch.zeros(8, dtype=torch.int64, device=dev)
torch.ops.nerfx.adam_step(p, torch.ones(8, device=dev), torch.zeros(8, device=dev),
                          torch.zeros(8, device=dev), s, 1e-2, 0.9, 0.99, 1e-15)
""",
    "adam_step, grad shape 7": """
p = torch.zeros(8, device=dev); s = torch.zeros(8, dtype=torch.int32, device=dev)
torch.ops.nerfx.adam_step(p, torch.ones(7, device=dev), torch.zeros(8, device=dev),
                          torch.zeros(8, device=dev), s, 1e-2, 0.9, 0.99, 1e-15)
""",
    "hash_encode, x of 4 columns": """
torch.ops.nerfx.hash_encode(torch.zeros(5, 4, device=dev), torch.zeros(16, 2, device=dev),
                            [0, 16], [2], 2)
""",
    "composite_rays, offsets float": """
z = torch.zeros(4, device=dev)
torch.ops.nerfx.composite_rays(z, torch.zeros(4, 3, device=dev), z, z, z, 1e-4)
""",
}


def run(case: str, device: str, state: str) -> str:
    code = PRELUDE + CASES[case] + "\nprint('NO ERROR RAISED')"
    proc = subprocess.run([sys.executable, "-c", code, device, state], capture_output=True,
                          text=True, timeout=300)
    if proc.returncode < 0:
        return f"CRASHED (signal {-proc.returncode})\n{proc.stderr[-1500:]}"
    if "RuntimeError" in proc.stderr:
        return "raised RuntimeError: " + proc.stderr.strip().splitlines()[-1][:120]
    return f"rc {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-300:]}"


def main() -> int:
    import torch

    combos = [("cpu", "cuda-untouched")]
    if torch.cuda.is_available():
        combos += [("cpu", "cuda-initialised"), ("cuda", "cuda-initialised")]
    crashed = False
    for device, state in combos:
        for case in CASES:
            result = run(case, device, state)
            crashed |= result.startswith("CRASHED")
            print(f"{case:32s} {device:4s} {state:16s} {result}", flush=True)
    return int(crashed)


if __name__ == "__main__":
    sys.exit(main())
