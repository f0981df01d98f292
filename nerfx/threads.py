"""CPU threads that follow the cores this process has free, so that training stays fair on a
machine that is doing other things.

torch's CPU ops and nerfx's CPU kernels split their work over an OpenMP team of
torch.get_num_threads() threads and wait for the whole team at the end of each parallel region.
When another process runs on the same cores, one of those threads is often descheduled, and the
others spin at the barrier for it: two runs on two cores then each fall to a small fraction of
their speed. Sleeping instead of spinning (OMP_WAIT_POLICY=passive) cures that but makes every
region pay a wake-up when the machine is idle.

FreeCores keeps spinning where it is cheap and avoids the collapse: between steps it counts the
threads of other processes that are runnable (Linux: /proc/loadavg's running count minus this
process's own running threads, from /proc/self/task) and sets torch's thread count to the cores
they leave, averaged over about a second. An idle machine keeps every core; a second run on the
same two cores brings each run to one thread, where no team waits for anyone. Elsewhere (no
/proc), the thread count stays as it is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

LOADAVG = Path("/proc/loadavg")
TASKS = Path("/proc/self/task")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def runnable_elsewhere() -> int | None:
    """Threads of other processes running or waiting for a core right now; None without
    /proc."""
    try:
        running = int(LOADAVG.read_text().split()[3].split("/")[0])
        mine = 0
        for task in TASKS.iterdir():
            stat = (task / "stat").read_text()
            mine += stat[stat.rindex(")") + 2] == "R"   # the state follows the command's ")"
    except (OSError, ValueError, IndexError):
        return None
    return max(running - mine, 0)


def free_cores(readings: int = 4, interval: float = 0.05) -> int:
    """The cores that other processes leave free now (averaged over `readings` readings
    `interval` seconds apart); every available core without /proc."""
    counts = []
    for i in range(readings):
        others = runnable_elsewhere()
        if others is None:
            return available_cores()
        counts.append(others)
        if i + 1 < readings:
            time.sleep(interval)
    return max(1, round(available_cores() - sum(counts) / len(counts)))


class FreeCores:
    """Call `update()` between steps; it sets torch's intra-op threads to the free cores.

    max_threads: the most threads to use (default: torch's count at construction).
    interval: seconds between two readings; `window` readings are averaged.
    """

    def __init__(self, max_threads: int | None = None, interval: float = 0.25,
                 window: int = 4):
        self.max_threads = max(1, min(max_threads or torch.get_num_threads(),
                                      available_cores()))
        self.cores, self.interval, self.window = available_cores(), interval, window
        self.readings: list[int] = []
        self.last = 0.0
        self.enabled = runnable_elsewhere() is not None
        self.threads = torch.get_num_threads()

    def update(self) -> int:
        """-> the thread count in force after this call."""
        now = time.monotonic()
        if not self.enabled or now - self.last < self.interval:
            return self.threads
        self.last = now
        others = runnable_elsewhere()
        if others is None:
            return self.threads
        self.readings = (self.readings + [others])[-self.window:]
        busy = sum(self.readings) / len(self.readings)
        wanted = max(1, min(self.max_threads, round(self.cores - busy)))
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            self.threads = wanted
        return self.threads
