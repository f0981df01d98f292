"""The shared training loop: losses as device tensors, and profiling a few steps."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from nerfx import loop, train
from nerfx.profiling import PROFILED_STEPS
from tests.helpers import requires_cuda


class CountingTask:
    """Steps that return tensor losses (one only every other step) and, on CUDA, read one
    value back to the host per step (a synchronisation the profiler must find)."""

    items_per_step = 4

    def __init__(self, device: str = "cpu"):
        self.device = device
        self.weight = torch.zeros(3, device=device)
        self.steps_taken = 0

    def train_step(self, step: int) -> dict:
        self.weight += 1
        self.steps_taken += 1
        losses = {"loss": self.weight.sum(), "plain": 0.5}
        if step % 2:  # made on the device: a copy from the host would wait for it
            losses["odd"] = self.weight[0] * 0 + step
        if self.device == "cuda":
            float(self.weight[0])  # a host synchronisation
        warnings.warn("a warning of the task's own", UserWarning, stacklevel=1)
        return losses

    def state_dict(self) -> dict:
        return {"weight": self.weight}

    def load_state_dict(self, state: dict) -> None:
        self.weight = state["weight"]

    def snapshot(self, run: Path, step: int) -> None:
        pass


def test_tensor_losses_and_losses_of_some_steps_only(tmp_path):
    task = CountingTask()
    with pytest.warns(UserWarning, match="the task's own"):
        state = loop.run_loop(task, tmp_path, loop.LoopSettings(steps=7, save_every=100))
    assert state.step == 7 and task.steps_taken == 7
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 7 and torch.equal(saved["task"]["weight"], torch.full((3,), 7.0))


def test_profiled_steps_write_a_trace_and_keep_other_warnings(tmp_path):
    task = CountingTask()
    with pytest.warns(UserWarning, match="the task's own"):
        loop.run_loop(task, tmp_path, loop.LoopSettings(steps=6, save_every=100,
                                                        profile_step=2))
    folder = tmp_path / "profile"
    trace = json.loads((folder / "trace.json").read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert {f"train step {s}" for s in range(2, 2 + PROFILED_STEPS)} <= names
    assert "train step 1" not in names and "train step 5" not in names
    assert "aten::add_" in (folder / "ops.txt").read_text()
    assert "no CUDA device" in (folder / "syncs.txt").read_text()


@pytest.mark.filterwarnings("ignore:a warning of the task's own")
def test_a_run_stopping_inside_the_profiled_steps_still_writes_them(tmp_path):
    loop.run_loop(CountingTask(), tmp_path, loop.LoopSettings(steps=3, save_every=100,
                                                              profile_step=2))
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())
    assert "train step 2" in {event.get("name") for event in trace["traceEvents"]}


@pytest.mark.slow
def test_train_command_profiles(tmp_path, monkeypatch):
    monkeypatch.setenv("NERFX_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    train.main(["--scene", "lego", "--fast", "--downscale", "100", "--eval-views", "2",
                "--video-frames", "0", "--device", "cpu", "--steps", "6", "--batch-rays", "64",
                "--profile-step", "1", "--out", str(run)])
    assert (run / "profile" / "trace.json").stat().st_size > 0
    assert "aten::" in (run / "profile" / "ops.txt").read_text()


@requires_cuda
@pytest.mark.cuda
def test_host_synchronisations_are_found_by_line(tmp_path):
    """One host read per step, at the task's line, and none from the loop itself."""
    task = CountingTask("cuda")
    with pytest.warns(UserWarning, match="the task's own"):
        loop.run_loop(task, tmp_path, loop.LoopSettings(steps=5, save_every=100,
                                                        profile_step=1))
    report = (tmp_path / "profile" / "syncs.txt").read_text()
    assert report.startswith("host synchronisations: 1 per step"), report
    assert f"{Path(__file__).name}:" in report


def test_threads_follow_the_cores_other_processes_leave(monkeypatch):
    """FreeCores sets torch's threads to the cores not taken by other runnable threads,
    averaged over its window, within [1, max_threads]; it leaves them alone without /proc."""
    from nerfx import threads

    busy = iter([0, 0, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0])
    monkeypatch.setattr(threads, "runnable_elsewhere", lambda: next(busy))
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    before = torch.get_num_threads()
    try:
        free = threads.FreeCores(max_threads=3, interval=0.0, window=2)
        counts = [free.update() for _ in range(13)]
        assert counts[:2] == [3, 3]            # idle: every core up to the cap
        assert counts[5] == 2                  # two busy threads: two cores left
        assert counts[-1] == 3 == torch.get_num_threads()  # free again, and set in torch
        monkeypatch.setattr(threads, "runnable_elsewhere", lambda: None)
        assert not threads.FreeCores().enabled
    finally:
        torch.set_num_threads(before)
