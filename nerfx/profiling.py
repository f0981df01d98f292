"""Profiles a few training steps of a run (`--profile-step N` of the training commands).

Steps N, N + 1, N + 2 run under torch.profiler and, on CUDA, under torch's synchronisation
debug mode, which reports each operation that makes the host wait for the device. The run folder
gets profile/trace.json (a Chrome trace: open it in Perfetto or chrome://tracing), profile/ops.txt
(the operators by total device time, or host time without a GPU) and profile/syncs.txt (each host
synchronisation inside a step, by the line of Python that caused it, and how often per step).
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

PROFILED_STEPS = 3
FOLDER = "profile"


class StepProfiler:
    """Profiles steps [first, first + PROFILED_STEPS) of a run into run/profile/."""

    def __init__(self, run: Path, first: int):
        self.folder = run / FOLDER
        self.first, self.last = first, first + PROFILED_STEPS - 1
        self.cuda = False
        self.profiler: torch.profiler.profile | None = None
        self.syncs: Counter[str] = Counter()  # "file:line" -> host synchronisations seen there
        self.steps = 0

    def wants(self, step: int) -> bool:
        return self.first <= step <= self.last

    @contextmanager
    def step(self, step: int) -> Iterator[None]:
        """Wraps training step `step` (one of the profiled ones)."""
        if self.profiler is None:
            self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
            activities = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
                torch.cuda.synchronize()  # the steps before are not in the picture
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        with warnings.catch_warnings(record=True) as caught, \
                torch.profiler.record_function(f"train step {step}"):
            warnings.simplefilter("always")
            if self.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                if self.cuda:
                    torch.cuda.set_sync_debug_mode("default")
        for warning in caught:
            if "synchroniz" in str(warning.message):
                self.syncs[f"{warning.filename}:{warning.lineno}"] += 1
            else:  # not ours to swallow
                warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                       warning.lineno)
        self.steps += 1

    def finish(self) -> None:
        """Writes the trace, the operator table and the synchronisations; prints a summary."""
        if self.profiler is None:
            return
        if self.cuda:
            torch.cuda.synchronize()
        self.profiler.__exit__(None, None, None)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.profiler.export_chrome_trace(str(self.folder / "trace.json"))
        sort = "cuda_time_total" if self.cuda else "cpu_time_total"
        table = self.profiler.key_averages().table(sort_by=sort, row_limit=40)
        (self.folder / "ops.txt").write_text(table + "\n")
        (self.folder / "syncs.txt").write_text(self.sync_report())
        print(f"nerfx: profiled {self.steps} steps into {self.folder}/ (trace.json, ops.txt, "
              f"syncs.txt)\n{self.sync_report()}", end="", flush=True)
        self.profiler = None

    def sync_report(self) -> str:
        if not self.cuda:
            return "host synchronisations: none to see (no CUDA device in this run)\n"
        total = sum(self.syncs.values())
        lines = [f"host synchronisations: {total / max(self.steps, 1):g} per step "
                 f"({total} in {self.steps} steps)"]
        lines += [f"  {count / max(self.steps, 1):g} per step at {where}"
                  for where, count in self.syncs.most_common()]
        return "\n".join(lines) + "\n"
