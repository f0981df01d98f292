"""What the viewer costs training: steps per second of Instant-NGP's CPU recipe with no page, with
a page whose camera is still (once its full-size frame is shown, the frame refreshed with the
latest weights every 2 s), and with a
page whose camera orbits without pause, the camera moved by a scripted client (no browser: it
reports camera moves at 30 Hz where viser's websocket handler would, and JPEG-encodes each frame
it receives as viser does before sending).

Each ratio is steps/s with the page over the mean steps/s without it just before and just after
(this machine is shared and noisy, and training speeds up as it goes), reported as the median.
Run in full with

    python -m benches.bench_view --seconds 10 --pairs 3

(the pytest entry runs one short pair, as a check that it works).
"""

from __future__ import annotations

import argparse
import io
import math
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from nerfx import trainers
from nerfx.loop import LoopState
from nerfx.view import open_viewer
from nerfx.view.camera import ViewCamera
from nerfx.view.sources import scene_view

CANVAS = (960, 540)     # the browser's canvas, pixels


class ScriptedPage:
    """A page without a browser: a camera that holds still or orbits the scene at 30 Hz."""

    def __init__(self, viewer, center: np.ndarray, radius: float, moving: bool):
        self.viewer, self.moving = viewer, moving
        self.center, self.radius = center, radius
        self.frames: list[tuple[float, int, str]] = []    # (time, height, kind) of each frame
        self.key = 10_000
        viewer.scheduler.add_page(self.key, self.receive)
        self._stop = threading.Event()
        self._angle = 0.0
        self.move()
        self._thread = threading.Thread(target=self._orbit, daemon=True)
        if moving:
            self._thread.start()

    def receive(self, picture: np.ndarray, job) -> None:
        Image.fromarray(picture).save(io.BytesIO(), format="JPEG", quality=90)
        self.frames.append((time.perf_counter(), job.height, job.request.kind))

    def move(self) -> None:
        from nerfx.cameras import look_at
        a = self._angle
        position = self.center + self.radius * np.array([math.cos(a), math.sin(a), 0.5])
        self.viewer.scheduler.camera_changed(self.key, ViewCamera(
            look_at(position, self.center), math.radians(50), *CANVAS))

    def _orbit(self) -> None:
        while not self._stop.wait(1 / 30):
            self._angle += 0.02
            self.move()

    def close(self) -> None:
        self._stop.set()
        if self.moving:
            self._thread.join()
        self.viewer.scheduler.remove_page(self.key)


def make_task(data: Path | None, downscale: int):
    request = trainers.TrainRequest(model="ngp", data=str(data) if data else None, fast=True,
                                    settings={"downscale": downscale})
    config = trainers.new_config(request)
    torch.manual_seed(0)
    task = trainers.trainer("ngp").make_task(config, torch.device("cpu"))
    task.begin()
    return task


def steps_per_second(task, state: LoopState, seconds: float, observer=None) -> float:
    """Steps a second of wall time (rendering for the viewer included) over `seconds` (at least
    one step, so `seconds=0` takes exactly one)."""
    start = time.perf_counter()
    steps = 0
    while steps == 0 or time.perf_counter() - start < seconds:
        tick = time.perf_counter()
        losses = task.train_step(state.step)
        state.step += 1
        state.seconds += time.perf_counter() - tick
        steps += 1
        if observer is not None:
            observer(state, losses)
    return steps / (time.perf_counter() - start)


def measure(seconds: float = 10.0, pairs: int = 3, warmup_steps: int = 30,
            data: Path | None = None, downscale: int = 8) -> dict:
    task = make_task(data, downscale)
    state = LoopState()
    steps_per_second(task, state, 0.0)
    for _ in range(warmup_steps):                       # past the first steps' full grid
        steps_per_second(task, state, 0.0)
    viewer = open_viewer(task.model, scene_view(task.train_set, task.model), Path("/tmp"),
                         port=0, training=True)
    center = np.asarray(task.config["turntable"]["center"])
    radius = task.config["turntable"]["radius"]
    results: dict[str, list] = {"still": [], "moving": []}
    frames: dict[str, list] = {"still": [], "moving": []}
    shares: dict[str, list] = {"still": [], "moving": []}
    arrivals: dict[str, list] = {"first frame": [], "sharp frame": []}     # seconds
    # Each measurement with a page sits between two without one (A B A B A ...), and its ratio
    # is to their mean: training speeds up as the grid prunes, which favours whatever comes
    # later, and the mean of the neighbours cancels a steady drift.
    base_before = steps_per_second(task, state, seconds)      # no page: no cost
    try:
        for _ in range(pairs):
            for kind in ("still", "moving"):
                budget = viewer.scheduler.budget
                budget.spent = {"render": 0.0, "train": 0.0}
                viewer.between_steps(state, {})      # the viewer's clock starts here
                opened = time.perf_counter()
                page = ScriptedPage(viewer, center, radius, kind == "moving")
                if kind == "still":              # steady state: its refined frame shown
                    end = time.perf_counter() + 60
                    while (not any(k == "refine" for _, _, k in page.frames)
                           and time.perf_counter() < end):
                        steps_per_second(task, state, 0.0, viewer.between_steps)
                    # A new viewpoint while training: its first frame, and its sharp one.
                    arrivals["first frame"].append(
                        page.frames[0][0] - opened if page.frames else math.inf)
                    arrivals["sharp frame"].append(next(
                        (t - opened for t, _, k in page.frames if k == "refine"), math.inf))
                    page.frames.clear()
                budget.spent = {"render": 0.0, "train": 0.0}
                viewed = steps_per_second(task, state, seconds, viewer.between_steps)
                page.close()
                base_after = steps_per_second(task, state, seconds)
                results[kind].append(viewed / ((base_before + base_after) / 2))
                base_before = base_after
                frames[kind].append(page.frames)
                shares[kind].append(budget.render_share())
    finally:
        viewer.close()
    summary = {"steps": state.step, "rays_per_step": task.items_per_step,
               "viewer_rays_per_second": round(viewer.scheduler.budget.rays_per_second)}
    for name, seconds_taken in arrivals.items():
        summary[f"{name.replace(' ', '_')}_seconds_median"] = round(
            statistics.median(seconds_taken), 2)
    for kind in results:
        summary[f"{kind}_ratio_median"] = round(statistics.median(results[kind]), 3)
        summary[f"{kind}_ratios"] = [round(r, 3) for r in results[kind]]
        counts = [len(f) / seconds for f in frames[kind]]
        heights = [h for f in frames[kind] for _, h, _ in f]
        summary[f"{kind}_frames_per_second"] = round(statistics.median(counts), 2)
        summary[f"{kind}_render_share"] = round(statistics.median(shares[kind]), 3)
        summary[f"{kind}_median_height"] = int(statistics.median(heights)) if heights else 0
    return summary


def test_viewer_overhead(benchmark, tmp_path, monkeypatch):
    monkeypatch.setenv("NERFX_DATA", str(tmp_path))
    benchmark.group = "viewer: training steps/s kept"
    result = benchmark.pedantic(measure, kwargs=dict(seconds=1.0, pairs=1, warmup_steps=2,
                                                     downscale=100), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert 0 < result["still_ratio_median"] and 0 < result["moving_ratio_median"]


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--warmup-steps", type=int, default=30)
    p.add_argument("--downscale", type=int, default=8)
    p.add_argument("--data", type=Path)
    args = p.parse_args()
    print(measure(args.seconds, args.pairs, args.warmup_steps, args.data, args.downscale))
