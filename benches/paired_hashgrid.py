"""The hash grid's cpu backend beside the reference and torch.compile of it, in paired, alternating
rounds (see benches/paired_composite.py for why): benches/bench_hashgrid.py's "fwd+bwd" work
(N=2^16 points, L=16, F=2, the parameter gradient through autograd from a fixed random gradient
of the output) at T=2^17 (the CPU recipe's) and T=2^19 (the paper's); each round times the three
once, in a rotating order, and the figures are medians over rounds of the per-round ratios.
--portable adds the cpu backend's portable loops (NERFX_CPU_PATH=portable for its calls) beside its
default ones (AVX2 where the CPU has them). --loss takes the gradient of out.square().sum()
instead, as this script did until 2026-12-04 (the loss then adds the same work to every row).

    OMP_NUM_THREADS=1 python -m benches.paired_hashgrid [--rounds 5] [--portable] [--loss]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from nerfx import ref
from nerfx.ops import HashGridEncoding, hash_encode


def with_cpu_path(path: str, fn):
    """fn with NERFX_CPU_PATH=path while it runs (the launchers read it on every call)."""
    def run(*args):
        before = os.environ.get("NERFX_CPU_PATH")
        os.environ["NERFX_CPU_PATH"] = path
        try:
            return fn(*args)
        finally:
            if before is None:
                del os.environ["NERFX_CPU_PATH"]
            else:
                os.environ["NERFX_CPU_PATH"] = before
    return run


def variants(log2_t: int, n: int, portable: bool = False, loss: bool = False):
    enc = HashGridEncoding(log2_hashmap_size=log2_t)
    x = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    params = enc.params.detach().clone().requires_grad_()
    compiled = torch.compile(lambda a, p: ref.hash_encode(a, p, **enc.config))
    fns = {"cpu": lambda a, p: hash_encode(a, p, backend="cpu", **enc.config),
           "torch": lambda a, p: ref.hash_encode(a, p, **enc.config),
           "torch-compile": compiled}

    grad_out = torch.randn(n, enc.output_dim, generator=torch.Generator().manual_seed(1))

    def fwd_bwd(fn):
        def run():
            out = fn(x, params)
            if loss:
                torch.autograd.grad(out.square().sum(), params)
            else:
                torch.autograd.grad(out, params, grad_out)
        return run
    runs = {name: fwd_bwd(fn) for name, fn in fns.items()}
    if portable:  # forward and backward alike
        runs["cpu-portable"] = with_cpu_path("portable", fwd_bwd(fns["cpu"]))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--points", type=int, default=2**16)
    parser.add_argument("--portable", action="store_true",
                        help="also time the cpu backend's portable loops")
    parser.add_argument("--loss", action="store_true",
                        help="the gradient of out.square().sum() instead of a fixed one")
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, N={args.points}, {args.rounds} rounds; medians; "
          + ("the gradient of out.square().sum()" if args.loss else "a fixed gradient of out"))
    for log2_t in (17, 19):
        runs = variants(log2_t, args.points, args.portable, args.loss)
        names = list(runs)
        for name in names:  # warm up (torch.compile compiles here)
            runs[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                runs[name]()
                times[name].append(time.perf_counter() - start)

        def speedup(over: str, t=times) -> float:
            return statistics.median(a / b for a, b in zip(t[over], t["cpu"], strict=True))

        ms = ", ".join(f"{n} {statistics.median(times[n]) * 1e3:.1f} ms" for n in names)
        print(f"  T=2^{log2_t}: {ms}; cpu {speedup('torch'):.1f}x the reference, "
              f"{speedup('torch-compile'):.1f}x torch.compile of it"
              + (f", {speedup('cpu-portable'):.2f}x its portable loops" if args.portable else ""))


if __name__ == "__main__":
    main()
