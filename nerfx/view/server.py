"""The viewer: a viser server whose pages show nerfx's render of their camera.

Two ways to drive the rendering:
- `start()`: a thread renders whenever a page waits for a frame (a finished run, or after
  training);
- `between_steps(state, losses)`: the training loop calls it between steps (outside training
  time); it renders within the budget that training time earns (nerfx.view.budget) and holds the
  loop while training is paused. With no page open it returns at once.
The page binds 127.0.0.1 unless told otherwise; nothing here opens a tunnel (no share links).
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfx.images import write_png
from nerfx.threads import FreeCores
from nerfx.view.budget import RenderBudget
from nerfx.view.frames import FrameJob, Renderable
from nerfx.view.geometry import Geometry
from nerfx.view.panels import Panels, TrainingNumbers
from nerfx.view.scene import SceneOverlays, ViewScene
from nerfx.view.scheduler import FrameScheduler

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Address:
    host: str
    port: int
    requested_port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Viewer:
    """Serves pages for one model. run: where snapshots go (RUN/snapshots/); geometry: meshes and
    point clouds drawn beside the render (nerfx.view.geometry.load_geometry)."""

    def __init__(self, model: Renderable, scene: ViewScene | None, run: Path,
                 host: str = "127.0.0.1", port: int = 8080, training: bool = False,
                 budget: RenderBudget | None = None, jpeg_quality: int = 90,
                 geometry: list[Geometry] | None = None):
        import viser  # the `view` extra; imported here so that nerfx.view imports without it

        self.run, self.jpeg_quality = run, jpeg_quality
        self.scheduler = FrameScheduler(model, budget)
        self.scheduler.training = training
        self.numbers = TrainingNumbers()
        self.paused = threading.Event()
        self._snapshots: list[Path] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_seconds = 0.0
        with contextlib.redirect_stdout(io.StringIO()):   # viser's own address box: ours is
            self.server = viser.ViserServer(host=host, port=port, verbose=False)   # one line
        self.address = Address(host, self.server.get_port(), port)
        # No tunnel to the outside, ever: no share button, and a share request from a page does
        # nothing (viser looks the method up on the instance when a page asks).
        self.server.gui.configure_theme(show_share_button=False)
        self.server.request_share_url = _no_share_url
        self.server.scene.set_up_direction("+z")
        self.server.scene.configure_environment_map(None)   # no download of an HDRI
        self.overlays = SceneOverlays(self.server, scene, geometry)
        self.panels = Panels(self, training)
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(lambda c: self.scheduler.remove_page(c.client_id))
        if scene is not None:
            self.server.initial_camera.position = tuple(scene.home_position())
            self.server.initial_camera.look_at = tuple(scene.center())

    # -- pages -------------------------------------------------------------------------------
    def _connect(self, client) -> None:
        key = client.client_id

        def send(picture: np.ndarray, job: FrameJob) -> None:
            if self.scheduler.hidden:
                return
            client.scene.set_background_image(picture, format="jpeg",
                                              jpeg_quality=self.jpeg_quality)
            self.panels.show_pose(client, job.request.camera, job.width, job.height)

        self.scheduler.add_page(key, send)
        self.panels.add_page(client)

        @client.camera.on_update
        def _(camera) -> None:
            from nerfx.view.camera import ViewCamera
            if camera.image_width <= 0 or camera.image_height <= 0:
                return
            self.scheduler.camera_changed(key, ViewCamera.from_viser(
                camera.wxyz, camera.position, camera.fov, camera.image_width,
                camera.image_height))

    def show_render(self, visible: bool) -> None:
        """Shows or hides the render on every page (hidden, nothing is rendered)."""
        self.scheduler.set_hidden(not visible)
        if not visible:
            for client in self.server.get_clients().values():
                client.scene.set_background_image(None)

    def snapshot(self, key: int) -> None:
        """Writes the page's view, refined with the current weights, to RUN/snapshots/."""
        if self.scheduler.hidden:
            self.panels.notify(key, "show the render to take a snapshot")
            return
        def write(job: FrameJob) -> None:
            step = self.numbers.step
            folder = self.run / "snapshots"
            path = folder / f"view_{step:06d}_{len(self._snapshots):03d}.png"
            write_png(path, job.picture())
            self._snapshots.append(path)
            self.panels.notify(key, f"snapshot: {path}")
        self.scheduler.request_refine(key, write)

    # -- driving the rendering ---------------------------------------------------------------
    def start(self) -> None:
        """Renders in a thread from now on (training over, or none)."""
        self.scheduler.training = False
        self.paused.clear()
        if self._thread is None:
            self._thread = threading.Thread(target=self._render_forever, daemon=True,
                                            name="nerfx-view")
            self._thread.start()

    def _render_forever(self) -> None:
        # This thread's renders use the cores the browser and other processes leave free, as
        # training does (nerfx.threads): a fixed team would spin for threads they deschedule.
        free_cores = FreeCores()
        while not self._stop.is_set():
            free_cores.update()
            if self.scheduler.work(0.1) == 0:
                self.scheduler.wake.wait(0.05)
                self.scheduler.wake.clear()

    def between_steps(self, state, losses: dict) -> None:
        """The training loop's observer: numbers, the budgeted rendering, the pause."""
        scheduler, budget = self.scheduler, self.scheduler.budget
        train_seconds = max(state.seconds - self._last_seconds, 0.0)
        self._last_seconds = state.seconds
        scheduler.weights += 1
        self.numbers.record(state, losses)
        if not scheduler.pages:
            return                         # no page open: no cost at all
        kind = scheduler.pending()
        budget.earn(train_seconds, budget.share(kind or "refresh", True))
        if kind is not None and budget.credit > 0:
            budget.spend(scheduler.work(budget.credit))
        self.panels.update_numbers(self.numbers, budget, self.paused.is_set())
        while self.paused.is_set() and not self._stop.is_set():
            scheduler.training = False     # paused: render freely
            if scheduler.work(0.1) == 0:
                scheduler.wake.wait(0.05)
                scheduler.wake.clear()
            self.panels.update_numbers(self.numbers, budget, True)
        scheduler.training = True

    def set_model(self, model: Renderable) -> None:
        self.scheduler.model = model

    def test_psnr(self, render_test) -> None:
        """Measures the held test view's PSNR with render_test() -> float (budgeted by the
        caller); shown in the numbers panel."""
        tick = time.perf_counter()
        self.numbers.test_psnr = render_test()
        self.scheduler.budget.spend(time.perf_counter() - tick)

    def close(self) -> None:
        self._stop.set()
        self.paused.clear()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.redirect_stdout(io.StringIO()):
            self.server.stop()


def _no_share_url(*_: object, **__: object) -> None:
    return None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


def device_of(model: Renderable) -> torch.device:
    return next(model.parameters()).device
