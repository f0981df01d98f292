"""Benchmark reporting: one side-by-side table per group at the end of a run.

Each benchmark sets `benchmark.group` (what is compared) and `extra_info["items"]` (points, rays
or samples per call). At the end of a run the groups are printed as markdown with the median
time, items per second and the speed relative to the group's reference (`torch`), and written
to the file named by NERFX_BENCH_MD when set.
"""

from __future__ import annotations

import os

import pytest
import torch

from benches.helpers import REFERENCE


def _markdown(benchmarks) -> str:
    groups: dict[str, list] = {}
    for bench in benchmarks:
        if bench.stats is not None and bench.stats.rounds:
            groups.setdefault(bench.group or "", []).append(bench)
    out = []
    for group, members in sorted(groups.items()):
        ref = next((b for b in members if b.params and b.params.get("impl") == REFERENCE), None)
        out += [f"\n### {group}\n", "| impl | median (ms) | rounds | items/s | vs reference |",
                "| --- | ---: | ---: | ---: | ---: |"]
        for bench in sorted(members, key=lambda b: b.stats.median):
            median = bench.stats.median
            items = bench.extra_info.get("items", 0)
            unit = bench.extra_info.get("unit", "items")
            ratio = f"{ref.stats.median / median:.2f}x" if ref is not None else "n/a"
            impl = (bench.params or {}).get("impl", bench.name)
            out.append(f"| {impl} | {median * 1e3:.3f} | {bench.stats.rounds} | "
                       f"{items / median:.3e} {unit}/s | {ratio} |")
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
