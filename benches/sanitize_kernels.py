"""Every CUDA kernel of nerfx._C once, at small awkward sizes, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
        python3 benches/sanitize_kernels.py

(benches/gpu_check.sh runs it under memcheck, racecheck and initcheck.) Without torch's caching
allocator each tensor is its own allocation, so an access past a tensor's end is out of bounds
for the sanitizer too. The hash grid runs in fp32, fp16 and fp64 with both gradients, the march
with one and two cascades, constant and cone steps, a ray capped and resumed, compositing with
empty rays and rays past the transmittance threshold, and the sparse Adam step. Prints each
kernel it ran and the checksum of its outputs; exits 0 when every call returned.
`--device cpu` runs the same calls on the cpu backend (a check of this script without a GPU);
`--only hash_encode` (or march_rays, composite_rays, adam_step) runs one op's calls. Each hash
grid call also prints where its inputs lie, so an address in a sanitizer report can be named.
"""

from __future__ import annotations

import argparse
import math
import sys

import torch


def report(name: str, *tensors: torch.Tensor) -> None:
    """One line per call: its name and a checksum of what it returned (the run's record)."""
    total = sum(float(t.detach().double().abs().sum()) for t in tensors if t.numel())
    print(f"{name:52s} checksum {total:.6g}", flush=True)


def finished(device: str, script: str) -> int:
    """Waits for the device's last kernel (so an error is reported here), says so, returns 0."""
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{script}: every kernel ran")
    return 0


def where(name: str, tensor: torch.Tensor) -> str:
    """`name [start, end)`: the bytes a tensor's storage spans, in hex."""
    start = tensor.untyped_storage().data_ptr()
    return f"{name} [{start:#x}, {start + tensor.untyped_storage().nbytes():#x})"


def main(device: str, only: str | None = None) -> int:
    if device == "cuda" and not torch.cuda.is_available():
        print("sanitize_kernels: no CUDA device")
        return 1
    from nerfx.ops import (
        HashGridEncoding,
        SkipZeroAdam,
        composite_rays,
        hash_encode,
        march_rays,
    )
    from nerfx.render import OccupancyGrid

    gen = torch.Generator(device).manual_seed(0)  # the march's jitter, drawn on the device
    host = torch.Generator().manual_seed(0)

    def random(draw, *args, **kwargs) -> torch.Tensor:
        """draw(*args) on the host, copied to the device: initcheck then judges nerfx's reads of
        memory a copy wrote (on an H200 it reported words of torch.rand's own CUDA output as
        never written when the hash grid read them; RESULTS.md, GPU)."""
        return draw(*args, generator=host, **kwargs).to(device)

    # Hash grid: a small grid with dense and hashed levels, N = 1000 (not a multiple of a block).
    hash_dtypes = (torch.float32, torch.float16, torch.float64)
    for dtype in hash_dtypes if only in (None, "hash_encode") else ():
        enc = HashGridEncoding(n_levels=5, log2_hashmap_size=10, base_resolution=3,
                               finest_resolution=40, dtype=dtype).to(device)
        x_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        x = random(torch.rand, 1000, 3, dtype=x_dtype).requires_grad_()
        print(where("x", x), where("params", enc.params), flush=True)
        out = hash_encode(x, enc.params, backend=device, **enc.config)
        print(where("out", out), flush=True)
        grads = torch.autograd.grad(out.square().sum(), (x, enc.params))
        report(f"hash_encode fwd+bwd {dtype}", out, *grads)

    # March: a random half-full grid, rays from outside, some capped at 7 samples and resumed.
    for cascades, cone_angle in ((1, 0.0), (2, 0.0), (2, 1 / 64)) if only in (None, "march_rays") \
            else ():
        grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=16, cascades=cascades).to(device)
        bits = random(torch.randint, 0, 256, grid.bitfield.shape)
        grid.bitfield.copy_(bits.to(torch.uint8))
        d = torch.nn.functional.normalize(random(torch.randn, 777, 3), dim=-1)
        o = -3 * d + 0.2 * random(torch.randn, 777, 3)
        kwargs = dict(step_size=math.sqrt(3) / 64, cone_angle=cone_angle)
        full = march_rays(o, d, grid, **kwargs, backend=device, perturb=True, generator=gen)
        capped = march_rays(o, d, grid, **kwargs, backend=device, max_samples=7)
        resumed = march_rays(o, d, grid, **kwargs, backend=device, near=capped.resume)
        report(f"march_rays cascades={cascades} cone={cone_angle:g}", full.t_start,
               full.positions, capped.t_start, resumed.t_start)

    # Compositing: rays of 0 to 70 samples, dense enough that some end past the threshold.
    counts = random(torch.randint, 0, 71, (501,))
    counts[::7] = 0
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    n = int(offsets[-1])
    t_start = random(torch.rand, n).sort().values * 4 + 2
    t_end = t_start + 0.05
    for dtype in (torch.float32, torch.float64) if only in (None, "composite_rays") else ():
        sigmas = (random(torch.rand, n) * 100).to(dtype).requires_grad_()
        rgbs = random(torch.rand, n, 3, dtype=dtype).requires_grad_()
        out = composite_rays(sigmas, rgbs, t_start.to(dtype), t_end.to(dtype), offsets,
                             backend=device)
        grads = torch.autograd.grad(out.color.sum() + out.depth.sum() + out.weights.sum(),
                                    (sigmas, rgbs))
        report(f"composite_rays fwd+bwd {dtype}", *out, *grads)

    # Sparse Adam on a table whose gradient is half zeros.
    adam_dtypes = (torch.float32, torch.float16, torch.float64)
    for dtype in adam_dtypes if only in (None, "adam_step") else ():
        table = torch.nn.Parameter(random(torch.randn, 1025).to(dtype))
        opt = SkipZeroAdam([{"params": [table], "skip_zero": True}], lr=1e-2, betas=(0.9, 0.99),
                           eps=1e-15)
        for _ in range(3):
            grad = random(torch.randn, 1025).to(dtype)
            grad[random(torch.rand, 1025) < 0.5] = 0
            table.grad = grad
            opt.step()
        report(f"adam_step {dtype}", table.detach())

    return finished(device, "sanitize_kernels")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", choices=["hash_encode", "march_rays", "composite_rays",
                                           "adam_step"])
    args = parser.parse_args()
    sys.exit(main(args.device, args.only))
