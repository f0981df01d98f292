"""Compositing on the CPU beside a copy of the same bytes, measured in paired, alternating rounds.

On a shared machine one pytest-benchmark row runs for a second or more after another, and the
other jobs' load moves in between (single ratios swing 1.5x). Here every round times each variant
once, back to back, in a rotating order, and a ratio is taken within each round; the figure is
the median over rounds. The work is benches/bench_composite.py's "fwd+bwd" (its inputs, autograd
through nerfx.ops.composite_rays, 68 B a sample in float32) on both loops of the cpu backend
(NERFX_CPU_PATH=auto and portable), float32 and half colours.

    OMP_NUM_THREADS=1 python -m benches.paired_composite [--rounds 40] [--rays 16384]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benches.bench_composite import BYTES_PER_SAMPLE, SAMPLES, make_samples
from nerfx.ops import composite_rays


def fwd_bwd(inputs, path: str):
    def run():
        os.environ["NERFX_CPU_PATH"] = path
        color = composite_rays(*inputs, backend="cpu")[0]
        torch.autograd.grad(color.sum(), inputs[:2])
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--rays", type=int, default=2**14)
    args = parser.parse_args()
    floats = make_samples(args.rays, "cpu")
    halves = (floats[0], floats[1].detach().half().requires_grad_(), *floats[2:])
    source = torch.ones(BYTES_PER_SAMPLE["fwd+bwd"] * args.rays * SAMPLES // 2, dtype=torch.uint8)
    target = torch.empty_like(source)
    variants = {"copy": lambda: target.copy_(source)}
    for path in ("auto", "portable"):
        variants[f"{path} float32"] = fwd_bwd(floats, path)
        variants[f"{path} half rgbs"] = fwd_bwd(halves, path)
    saved = os.environ.get("NERFX_CPU_PATH")
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm up
        variants[name]()
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    if saved is None:
        os.environ.pop("NERFX_CPU_PATH", None)
    else:
        os.environ["NERFX_CPU_PATH"] = saved

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))

    print(f"threads {torch.get_num_threads()}, {args.rays} rays x {SAMPLES} samples, "
          f"{args.rounds} rounds; medians")
    for name in names:
        print(f"  {name:20s} {statistics.median(times[name]) * 1e3:8.2f} ms")
    for path in ("auto", "portable"):
        of_copy = ratio("copy", f"{path} float32")
        half = ratio(f"{path} half rgbs", f"{path} float32")
        print(f"  {path}: float32 at {of_copy:.0%} of the copy's bandwidth; "
              f"half rgbs / float32 time {half:.2f}")
    print(f"  auto / portable time, float32: {ratio('auto float32', 'portable float32'):.2f}")


if __name__ == "__main__":
    main()
