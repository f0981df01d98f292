"""Benchmark reporting: one side-by-side table per group at the end of a run.

Each benchmark sets `benchmark.group` (what is compared) and `extra_info["items"]` (points, rays
or samples per call). At the end of a run the groups are printed as markdown with the median
time, items per second and the speed relative to the group's reference (`torch`), and written
to the file named by NERFX_BENCH_MD when set. A group whose benchmarks give `extra_info["bytes"]`
(what the op must read and write) also gets the effective bandwidth, and beside a `copy` row
(a device copy moving as many bytes) the fraction of that bandwidth each reaches.
"""

from __future__ import annotations

import os

import pytest
import torch

from benches.helpers import COPY, REFERENCE


def _markdown(benchmarks) -> str:
    groups: dict[str, list] = {}
    for bench in benchmarks:
        if bench.stats is not None and bench.stats.rounds:
            groups.setdefault(bench.group or "", []).append(bench)
    out = []
    for group, members in sorted(groups.items()):
        def impl_of(bench) -> str:
            return (bench.params or {}).get("impl", bench.name)

        ref = next((b for b in members if impl_of(b) == REFERENCE), None)
        copy = next((b for b in members if impl_of(b) == COPY), None)
        moved = any("bytes" in b.extra_info for b in members)
        head = "| impl | median (ms) | rounds | items/s | vs reference |"
        rule = "| --- | ---: | ---: | ---: | ---: |"
        if moved:
            head += " GB/s | of copy |"
            rule += " ---: | ---: |"
        out += [f"\n### {group}\n", head, rule]
        for bench in sorted(members, key=lambda b: b.stats.median):
            median = bench.stats.median
            items = bench.extra_info.get("items", 0)
            unit = bench.extra_info.get("unit", "items")
            ratio = f"{ref.stats.median / median:.2f}x" if ref is not None else "n/a"
            line = (f"| {impl_of(bench)} | {median * 1e3:.3f} | {bench.stats.rounds} | "
                    f"{items / median:.3e} {unit}/s | {ratio} |")
            if moved:
                nbytes = bench.extra_info.get("bytes", 0)
                copy_rate = (copy.extra_info.get("bytes", 0) / copy.stats.median
                             if copy is not None else 0)
                fraction = f"{nbytes / median / copy_rate:.0%}" if copy_rate else "n/a"
                line += f" {nbytes / median / 1e9:.0f} | {fraction} |" if nbytes else " | |"
            out.append(line)
    return "\n".join(out) + "\n"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or session.disabled or not session.benchmarks:
        return
    table = _markdown(session.benchmarks)
    terminalreporter.write_sep("=", "nerfx side-by-side (speed relative to the torch reference)")
    terminalreporter.write_line(table)
    path = os.environ.get("NERFX_BENCH_MD")
    if path:
        with open(path, "w") as f:
            f.write(table)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
