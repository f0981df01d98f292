"""Data-parallel training: process group, data shards, gradient averaging.

    torchrun --nproc_per_node 8 -m nerfx.train --model ddpm --data cifar10:PATH
    python -m nerfx.train --model vit --fast --processes 2     # nerfx starts them itself (CPU)

Every process holds the whole model and trains on its own slice of each global batch (the batch
size setting is per process); after each backward the gradients are averaged over the processes
with one all-reduce per bucket, so every process takes the same optimiser step and the weights
stay identical. This is DistributedDataParallel's math without its forward hook, which sees only
`model(...)` calls and not methods such as `VAE.loss`. Process 0 writes checkpoints, pictures and
metrics. Nothing here does anything in a single process.

On a CPU, a small model gains more from W processes of one thread each than from one process of
W threads (no thread team waits for its slowest thread at every operator); nerfx then starts the
processes itself (`LocalWorkers`): they meet through a file in a private temporary folder, and
gloo talks over 127.0.0.1 only, so no port is open to other machines.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nerfx.runs import RunError
from nerfx.threads import free_cores

BUCKET_ELEMENTS = 1 << 22      # gradients are all-reduced in flat buckets of up to 4M elements
LOOPBACK = "127.0.0.1"         # where the processes nerfx starts itself talk


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@dataclass(frozen=True)
class LocalGroup:
    """This process's place among the `world` CPU processes nerfx started itself."""

    rank: int
    world: int
    store_path: str              # the file through which they meet (torch's FileStore)


def setup(device_type: str, local: LocalGroup | None = None) -> torch.device | None:
    """Joins the process group torchrun describes (NCCL on GPUs, gloo on CPUs), or the local
    one; returns this process's device on GPUs (cuda:LOCAL_RANK), None on CPUs or alone."""
    if dist.is_initialized():
        return None
    if local is not None:
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=LOOPBACK)]
        dist.init_process_group("gloo", store=dist.FileStore(local.store_path, local.world),
                                rank=local.rank, world_size=local.world, pg_options=options)
        return None
    if not launched():
        return None
    if device_type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        return torch.device("cuda", local)
    dist.init_process_group("gloo")
    return None


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def process_seed(seed: int) -> int:
    """A seed of this process's own random stream (the run's seed in process 0)."""
    return seed + 1_000_003 * rank()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def max_over_processes(value: float) -> float:
    """The largest of each process's value (all get the same number, e.g. a shared clock)."""
    if world_size() == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced.item()


def any_process(flag: bool) -> bool:
    """Whether flag holds on any process (so all take the same decision, e.g. to stop)."""
    return max_over_processes(float(flag)) > 0


def local_processes(setting: int | str | None, device_type: str, threads: int | None) -> int:
    """How many processes nerfx itself starts for a run: the setting ("auto": as many as the free
    cores hold, of `threads` threads each, default 1), and 1 on a GPU or under a launcher."""
    if setting not in (None, "auto") and (isinstance(setting, bool)
                                          or not isinstance(setting, int) or setting < 1):
        raise RunError(f"processes is a count of processes or \"auto\", not {setting!r}")
    if setting in (None, 1) or device_type != "cpu" or launched():
        return 1
    if setting == "auto":
        return max(1, free_cores() // max(1, threads or 1))
    return setting


class LocalWorkers:
    """Processes 1 to world - 1 of a LocalGroup, each running target(*args, its LocalGroup) in a
    fresh interpreter; the calling process is process 0 (`group`). Use as a context manager:
    leaving it waits for the workers, stops any still running after `timeout` seconds and
    removes the meeting folder; a worker that failed while process 0 did not is an error.

    Nobody waits for a process that is gone: a worker that fails while process 0 is still inside
    the block for `patience` seconds more (blocked, e.g. waiting in the group for it) ends the
    run — the other workers stopped, the folder removed, process 0 exiting with status 1 (130
    if the worker was interrupted); a worker whose process 0 has gone (killed) removes the
    folder and exits within a second."""

    def __init__(self, world: int, target: Callable, args: tuple, timeout: float = 120.0,
                 patience: float = 15.0):
        self.folder = tempfile.mkdtemp(prefix="nerfx-group-")     # private: mode 0700
        store = os.path.join(self.folder, "store")
        self.group, self.timeout = LocalGroup(0, world, store), timeout
        spawn = multiprocessing.get_context("spawn")
        self.workers = [spawn.Process(target=_worker, daemon=True, name=f"nerfx process {r}",
                                      args=(os.getpid(), target, (*args,
                                                                  LocalGroup(r, world, store))))
                        for r in range(1, world)]
        for worker in self.workers:
            worker.start()
        self._leaving = threading.Event()
        threading.Thread(target=self._watch, args=(patience,), daemon=True,
                         name="nerfx workers watch").start()

    def _watch(self, patience: float) -> None:
        while not self._leaving.wait(0.5):
            failed = [w for w in self.workers if w.exitcode not in (None, 0)]
            if not failed or self._leaving.wait(patience):
                continue      # all well, or process 0 noticed and is leaving on its own
            code = failed[0].exitcode
            print(f"nerfx.train: {failed[0].name} ended with exit code {code} and the run "
                  "cannot go on without it; stopping", file=sys.stderr, flush=True)
            for worker in self.workers:
                if worker.is_alive():
                    worker.terminate()
            shutil.rmtree(self.folder, ignore_errors=True)
            sys.stdout.flush()
            # Process 0 may be blocked in C++ (gloo), where nothing else reaches it; an
            # interrupted worker (Ctrl-C) passes on its status 130.
            os._exit(130 if code == 130 else 1)

    def __enter__(self) -> LocalWorkers:
        return self

    def __exit__(self, kind, error, trace) -> None:
        self._leaving.set()
        if kind is not None:
            cleanup()             # closes this process's connections: a waiting worker stops
        for worker in self.workers:
            worker.join(self.timeout if kind is None else 5.0)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        shutil.rmtree(self.folder, ignore_errors=True)
        failed = [f"{w.name} ended with exit code {w.exitcode}" for w in self.workers
                  if w.exitcode != 0]
        if failed and kind is None:
            raise RuntimeError("; ".join(failed))


def _worker(parent: int, target: Callable, args: tuple) -> None:
    """A LocalWorkers process: target(*args), leaving (and removing the meeting folder) as soon
    as process 0, its parent, is gone."""
    folder = os.path.dirname(args[-1].store_path)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True, name="nerfx parent watch").start()
    target(*args)


@torch.no_grad()
def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replaces each gradient by its mean over the processes (a no-op in one process)."""
    if world_size() == 1:
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    bucket: list[torch.Tensor] = []
    size = 0
    for grad in grads + [None]:
        if grad is not None:
            bucket.append(grad)
            size += grad.numel()
        if bucket and (grad is None or size >= BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat /= world_size()
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0
