"""Benchmark helpers: the devices available here and one timed, recorded benchmark.

Each benchmark sets `benchmark.group` (what is compared) and `extra_info["items"]` (points, rays
or samples per call); benches/conftest.py prints the groups side by side at the end of a run.
"""

from __future__ import annotations

import contextlib
import os
import time

import pytest
import torch

REFERENCE = "torch"  # the implementation every group is compared with
COPY = "copy"  # a device copy of the bytes a memory-bound op must move: its bandwidth ceiling
DEVICES_VAR = "NERFX_BENCH_DEVICES"  # e.g. "cuda": benchmark only there (gpu_check.sh)


def devices() -> list[str]:
    """The devices to benchmark on: cpu and, where there is one, cuda; NERFX_BENCH_DEVICES
    (comma-separated) narrows that."""
    found = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    wanted = os.environ.get(DEVICES_VAR)
    return [d for d in found if d in wanted.split(",")] if wanted else found


# The image models' precisions: bf16 autocast (the GPU's training precision) and fp32 beside it.
# The CPU benchmarks fp32 only: bf16 autocast made a ViT step slower on this project's AVX-512
# CPU (benches/RESULTS.md, ViT), so a CPU bf16 row would time a setting nobody should use.
PRECISIONS = ["bf16", "fp32"]


def require_precision(device: str, precision: str) -> torch.dtype:
    """The compute dtype of a precision row, or a skip where the device does not run it."""
    if device == "cpu" and precision == "bf16":
        pytest.skip("bf16 rows are the GPU's; the CPU benchmarks fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(device: str, precision: str):
    """bf16 autocast for a bf16 row; nothing (fp32) otherwise."""
    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_benchmark(benchmark, fn, device: str, group: str, items: int, unit: str) -> None:
    """Times fn (synchronising the GPU) and records what the summary table needs."""
    benchmark.group = group
    benchmark.extra_info.update(items=items, unit=unit, device=device)

    def timed():
        fn()
        synchronize(device)

    start = time.perf_counter()
    timed()  # warm-up: compilation, autotuning, allocator
    once = time.perf_counter() - start
    # About a second of rounds per benchmark (5 to 30), so a shared machine's hiccups average out.
    rounds = int(min(max(1.0 / max(once, 1e-6), 5), 30))
    # NERFX_BENCH_ROUNDS: a fixed count (gpu_check.sh's CPU rehearsal runs each row once).
    rounds = int(os.environ.get("NERFX_BENCH_ROUNDS") or rounds)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)
