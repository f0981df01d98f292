"""The Triton attention kernels once each (forward, delta, backward), for compute-sanitizer.

    compute-sanitizer --tool racecheck python3 benches/sanitize_attention.py

They stage tiles in shared memory, so racecheck joins memcheck and initcheck for them
(benches/gpu_check.sh filters each tool to these kernels' names). Awkward sizes: L = 197 and 130
(not a multiple of a block), D = 40, causal and not, a packed varlen batch with an empty sequence.
Prints each call and a checksum; exits 0 when every call returned.
`--device cpu` runs the same calls in Triton's interpreter at tiny sizes (the CPU rehearsal).
"""

from __future__ import annotations

import os
import sys


def main(device: str) -> int:
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("sanitize_attention: no CUDA device")
        return 1
    from sanitize_kernels import finished, report  # benches/ is this script's folder

    from nerfx.ops import attention, attention_varlen

    gen = torch.Generator(device).manual_seed(0)
    # The interpreter: fp32 (its bf16 dot is wrong) and tiny sizes (~0.6 ms a program).
    cases = ([((1, 2, 197, 40), torch.float16, False), ((2, 2, 130, 64), torch.bfloat16, True),
              ((1, 1, 64, 64), torch.float32, False)] if device == "cuda"
             else [((1, 1, 19, 16), torch.float32, False), ((1, 1, 13, 16), torch.float32, True)])

    def rand(*shape, dtype):
        return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_()

    for shape, dtype, causal in cases:
        q, k, v = (rand(*shape, dtype=dtype) for _ in range(3))
        out = attention(q, k, v, causal=causal, backend="triton")
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        report(f"attention fwd+bwd {tuple(shape)} {dtype} causal={causal}", out, *grads)

    lens = [5, 77, 0, 33] if device == "cuda" else [3, 0, 7]
    offsets = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device=device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    heads, dim = (2, 40) if device == "cuda" else (1, 16)
    q, k, v = (rand(sum(lens), heads, dim, dtype=dtype) for _ in range(3))
    out = attention_varlen(q, k, v, offsets, causal=True, backend="triton")
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    report(f"attention_varlen fwd+bwd lens={lens} {dtype}", out, *grads)

    return finished(device, "sanitize_attention")


if __name__ == "__main__":
    sys.exit(main(sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cuda"))
