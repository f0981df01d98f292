"""Training alone and beside a second run on the same cores: steps in a fixed training time.

    python benches/fair_share.py --seconds 30 --pairs 3 [-- extra nerfx.train flags]

For each setting (the default, threads following the free cores; and --threads fixed at every
core, as nerfx trained before) it runs, alternating and repeated --pairs times: one run alone,
then two runs started together. It prints the median steps of each and the share the pair keeps
of the alone rate. Run it on otherwise idle cores; the built-in lego must exist already (a first
`python -m nerfx.train --fast` generates it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_command(out: Path, seconds: float, threads: int | None, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "nerfx.train", "--scene", "lego", "--fast",
               "--max-seconds", str(seconds), "--steps", "1000000", "--eval-views", "1",
               "--video-frames", "0", "--out", str(out), *extra]
    return command + (["--threads", str(threads)] if threads else [])


def steps_of(runs: list[Path], commands: list[list[str]]) -> list[int]:
    """Starts the commands together and returns each run's steps."""
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for c in commands]
    for p, c in zip(procs, commands, strict=True):
        if p.wait() != 0:
            raise SystemExit(f"failed: {' '.join(c)}")
    return [json.loads((r / "metrics.json").read_text())["steps"] for r in runs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("extra", nargs="*", help="more nerfx.train flags (after --)")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    settings = {"follow free cores (default)": None, f"--threads {cores} (fixed)": cores}
    alone: dict[str, list[int]] = {k: [] for k in settings}
    paired: dict[str, list[int]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            for name, threads in settings.items():
                runs = [Path(tmp) / f"{i}-{threads}-{k}" for k in "abc"]
                alone[name] += steps_of(runs[:1], [train_command(runs[0], args.seconds, threads,
                                                                 args.extra)])
                paired[name] += steps_of(runs[1:], [train_command(r, args.seconds, threads,
                                                                  args.extra)
                                                    for r in runs[1:]])
                print(f"round {i + 1}, {name}: alone {alone[name][-1]}, together "
                      f"{paired[name][-2:]}", flush=True)
    print(f"\nsteps in {args.seconds:g} s of training, medians over {args.pairs} rounds:")
    print("| setting | alone | each of two together | share of alone |")
    print("| --- | ---: | ---: | ---: |")
    for name in settings:
        a, b = statistics.median(alone[name]), statistics.median(paired[name])
        print(f"| {name} | {a:.0f} | {b:.0f} (min {min(paired[name])}) | {b / a:.0%} |")


if __name__ == "__main__":
    main()
