"""SkipZeroAdam's cpu loops beside torch.optim.Adam(fused=True) on the same hash table, in paired,
alternating rounds (see benches/paired_composite.py for why): benches/bench_adam.py's table (T=2^17,
3398512 entries, a fraction of its F=2 rows touched), each of the cpu backend's loops chosen by
NERFX_CPU_PATH ("auto": AVX-512 where the CPU has it; "avx2"; "portable") timed right after the
fused step of the same round; the figures are medians over rounds of the per-round ratios
(nerfx time / fused time: below 1, nerfx is faster).

    OMP_NUM_THREADS=1 python -m benches.paired_adam [--rounds 25] [--touched 0.1,0.23,0.54,1]

With one thread the times are the thread's CPU time (time.thread_time: what the other jobs of a
shared machine take is left out, though not their use of the memory bus); with more, wall time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from benches.bench_adam import SETTINGS, make_table
from nerfx.ops import SkipZeroAdam, use_backend

PATHS = ("auto", "avx2", "portable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--touched", default="0.1,0.23,0.54,1",
                        help="fractions of the table's rows with a nonzero gradient")
    args = parser.parse_args()
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    print(f"threads {torch.get_num_threads()}, {args.rounds} rounds; nerfx / fused Adam, "
          "medians of the rounds' ratios")
    for rate in (float(r) for r in args.touched.split(",")):
        fused_param = make_table("cpu", rate)
        fused = torch.optim.Adam([fused_param], fused=True, **SETTINGS)
        steps = {}
        for path in PATHS:
            optimizer = SkipZeroAdam([make_table("cpu", rate)], skip_zero=True, **SETTINGS)

            def step(optimizer=optimizer, path=path):
                os.environ["NERFX_CPU_PATH"] = path
                with use_backend("cpu"):
                    optimizer.step()
            steps[path] = step
        for step in (fused.step, *steps.values()):  # the state's first allocation: untimed
            step()
        fused_times, ratios = [], {path: [] for path in PATHS}
        for _ in range(args.rounds):
            start = clock()
            fused.step()
            fused_times.append(clock() - start)
            for path, step in steps.items():
                start = clock()
                step()
                ratios[path].append((clock() - start) / fused_times[-1])
        cells = "  ".join(f"{p} {statistics.median(r):.2f}" for p, r in ratios.items())
        print(f"  {rate:4.0%} of rows: fused {statistics.median(fused_times) * 1e3:.2f} ms; "
              f"{cells}", flush=True)
    os.environ.pop("NERFX_CPU_PATH", None)


if __name__ == "__main__":
    main()
