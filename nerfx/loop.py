"""The optimisation loop, checkpoints and resume that the image-model trainers share.

A trainer is a `Task`: it owns its model, optimiser, data order and pictures, and takes one step
at a time. A step's losses may be device tensors: the loop sums them where they are and reads them
when the progress bar redraws (every half second), so a GPU step need not wait for the device to
report a number. `run_loop` drives it: a progress bar (loss, items per second), an atomic checkpoint
every `save_every` steps and at the end (the task's state, torch's RNG state, the step and the
seconds trained), pictures every `snapshot_every` steps, and a stop at `steps` or `max_seconds`.
A run killed at any moment resumes from its last checkpoint with the same random state.

Optional task hook: `after_step(state)` runs after each step, outside the training time (the
radiance-field trainer evaluates at the paper's clock marks there). Optional caller hook:
`observer(state, losses)` runs after each step too, outside the training time, with that step's
losses as the task returned them (a viewer renders there, and may hold the loop to pause it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from nerfx import distributed
from nerfx.profiling import StepProfiler
from nerfx.runs import CHECKPOINT, checkpoint_payload, read_run_checkpoint, save_checkpoint
from nerfx.threads import FreeCores, available_cores


class Task(Protocol):
    """One model's training, step by step."""

    items_per_step: int          # images per step, for the progress bar's rate

    # one optimiser step; its losses (floats, or 0-dim tensors read only for display)
    def train_step(self, step: int) -> dict[str, float | torch.Tensor]: ...
    def state_dict(self) -> dict: ...                           # tensors and plain values only
    def load_state_dict(self, state: dict) -> None: ...
    def snapshot(self, run: Path, step: int) -> None: ...      # pictures of progress


@dataclass
class LoopSettings:
    steps: int                   # stop after this many steps in all
    max_seconds: float | None = None   # or after this much training time in all
    save_every: int = 500        # steps between checkpoints
    snapshot_every: int = 0      # steps between pictures (0: only at the end)
    unit: str = "img"            # what items_per_step counts, for the progress bar's rate
    profile_step: int | None = None  # profile this step and the next two (nerfx.profiling)
    threads: int | None = None   # CPU threads; None: the free cores, followed (nerfx.threads)


@dataclass
class LoopState:
    step: int = 0                # steps taken
    seconds: float = 0.0         # training time so far, resumes included


def save(run: Path, task: Task, state: LoopState) -> None:
    """Process 0 writes the checkpoint (the others hold the same weights)."""
    if not distributed.is_main():
        return
    save_checkpoint(run / CHECKPOINT,
                    checkpoint_payload(state.step, state.seconds, task.state_dict()))


def resume(run: Path, config: dict, task: Task, device: torch.device | str = "cpu"
           ) -> LoopState:
    """Loads the last checkpoint of a run into task; the loop continues where it stopped.
    config: the run's config.json (nerfx.runs.read_run_config)."""
    payload = read_run_checkpoint(run, config, device)
    task.load_state_dict(payload["task"])
    if distributed.is_main():       # the other processes keep their own streams
        torch.set_rng_state(payload["rng"].cpu())
    return LoopState(int(payload["step"]), float(payload["seconds"]))


REDRAW_SECONDS = 0.5  # the progress bar's refresh, and how often the losses are read


Observer = Callable[[LoopState, dict], None]


def run_loop(task: Task, run: Path, settings: LoopSettings, state: LoopState | None = None,
             desc: str = "train", observer: Observer | None = None) -> LoopState:
    """Trains until settings.steps or settings.max_seconds; returns where it stopped.
    observer(state, losses), when given, runs after every step outside the training time."""
    state = state or LoopState()
    # Each loss summed since the bar last showed it, and over how many steps (tensors stay on
    # their device until then).
    sums: dict[str, tuple[float | torch.Tensor, int]] = {}
    bar = tqdm(total=settings.steps, initial=state.step, desc=desc, unit="step",
               dynamic_ncols=True, mininterval=REDRAW_SECONDS, disable=not distributed.is_main())
    started, seconds_before = time.perf_counter(), state.seconds
    shown = started
    profiler = (StepProfiler(run, settings.profile_step)
                if settings.profile_step is not None and distributed.is_main() else None)
    threads_before = torch.get_num_threads()
    free_cores = FreeCores() if settings.threads is None else None
    if settings.threads is not None:
        torch.set_num_threads(max(1, min(settings.threads, available_cores())))
    try:
        while state.step < settings.steps:
            if settings.max_seconds is not None and distributed.any_process(
                    state.seconds >= settings.max_seconds):       # all stop at the same step
                break
            if free_cores is not None:
                free_cores.update()
            if profiler is not None and profiler.wants(state.step):
                with profiler.step(state.step):
                    step_losses = task.train_step(state.step)
            else:
                step_losses = task.train_step(state.step)
            state.step += 1
            state.seconds = seconds_before + time.perf_counter() - started
            # The mean since the last redraw reads better than one noisy step.
            for key, value in step_losses.items():
                value = value.detach() if isinstance(value, torch.Tensor) else value
                total, count = sums.get(key, (0.0, 0))
                sums[key] = (total + value, count + 1)
            bar.update(1)
            now = time.perf_counter()
            if now - shown >= REDRAW_SECONDS or state.step >= settings.steps:
                shown = now
                rate = (task.items_per_step * distributed.world_size() * bar.format_dict["rate"]
                        if bar.format_dict.get("rate") else 0)
                means = {k: f"{float(total) / count:.4g}" for k, (total, count) in sums.items()}
                bar.set_postfix({**means, f"{settings.unit}/s": f"{rate:.0f}"}, refresh=False)
                sums = {}
            if profiler is not None and state.step - 1 == profiler.last:
                paused = time.perf_counter()
                profiler.finish()                         # writing it is not training time
                started += time.perf_counter() - paused
            after_step = getattr(task, "after_step", None)
            if after_step is not None:
                paused = time.perf_counter()
                after_step(state)                         # not training time
                started += time.perf_counter() - paused
            if observer is not None:
                paused = time.perf_counter()
                observer(state, step_losses)              # not training time
                started += time.perf_counter() - paused
            if (settings.snapshot_every and state.step % settings.snapshot_every == 0
                    and distributed.is_main()):
                paused = time.perf_counter()
                task.snapshot(run, state.step)           # pictures are not training time
                started += time.perf_counter() - paused
            if state.step % settings.save_every == 0:
                save(run, task, state)
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
        if profiler is not None:
            profiler.finish()                             # stopped before its last step
    save(run, task, state)
    return state


class BatchStream:
    """Endless seeded epochs of (images, labels) from an ImageDataset, resumable exactly: the
    order of epoch e is randperm(n) under seed + e, and the state is (epoch, position).

    Under torchrun each of the W processes takes its own slice of a global batch of
    W * batch_size images, so W processes see what one process with a W times larger batch sees,
    and a run resumes with any number of processes (the position counts global images)."""

    def __init__(self, data, batch_size: int, seed: int, device: torch.device,
                 value_range: tuple[float, float] = (-1.0, 1.0)):
        world = distributed.world_size()
        if batch_size * world > len(data):
            raise ValueError(f"batch size {batch_size} x {world} processes exceeds the "
                             f"{len(data)} training images")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.global_batch, self.rank = batch_size * world, distributed.rank()
        self.device, self.value_range = device, value_range
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.data), generator=generator)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (images [B, C, H, W] float in value_range, labels [B]) on the device."""
        if self.position + self.global_batch > len(self.data):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order()
        start = self.position + self.rank * self.batch_size       # this process's slice
        index = self._order[start:start + self.batch_size]
        self.position += self.global_batch
        images = self.data.as_float(self.value_range, index).to(self.device, non_blocking=True)
        return images, self.data.labels[index].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._epoch_order()
