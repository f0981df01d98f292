"""The page's controls: display mode, snapshot and the camera's pose per page; the render's and
the overlays' toggles, the crop box; while training, the numbers and the pause button."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from nerfx.view.budget import RenderBudget
from nerfx.view.camera import ViewCamera
from nerfx.view.crop import Box, as_box, can_crop
from nerfx.view.frames import MODES
from nerfx.view.paths import interpolate, render_path, save_path

REDRAW_SECONDS = 0.5


@dataclass
class TrainingNumbers:
    """What the numbers panel shows, recorded between training steps."""

    step: int = 0
    seconds: float = 0.0
    values: dict[str, float | torch.Tensor] = field(default_factory=dict)
    test_psnr: float | None = None
    rays_trained: float = 0.0     # rays stepped through since the start of this session
    started_seconds: float | None = None

    def record(self, state, losses: dict) -> None:
        if self.started_seconds is None:
            self.started_seconds = state.seconds
        self.step, self.seconds = state.step, state.seconds
        self.values = dict(losses)
        self.rays_trained += float(losses.get("rays", 0))

    def lines(self, budget: RenderBudget, paused: bool) -> list[str]:
        values = {k: float(v) for k, v in self.values.items()}   # reads device tensors here
        trained = self.seconds - (self.started_seconds or 0.0)
        share = budget.render_share()
        lines = [f"**step {self.step}**{' (paused)' if paused else ''} · "
                 f"{self.seconds:.1f} s trained"]
        if "loss" in values:
            lines.append(f"loss {values['loss']:.5f} · train PSNR {values.get('psnr', 0):.2f} dB")
        if self.test_psnr is not None:
            lines.append(f"test view PSNR {self.test_psnr:.2f} dB")
        if trained > 0 and self.rays_trained:
            lines.append(f"training {self.rays_trained / trained:,.0f} rays/s")
        samples = [f"{values[k]:.1f} {name}" for k, name in
                   (("marched/ray", "marched"), ("samples/ray", "trained")) if k in values]
        if samples:
            lines.append("samples per ray: " + ", ".join(samples))
        lines.append(f"viewer {budget.rays_per_second:,.0f} rays/s · time: "
                     f"{100 * (1 - share):.0f}% training, {100 * share:.0f}% rendering")
        return lines


class Panels:
    """The GUI of one Viewer."""

    def __init__(self, viewer, training: bool):
        self.viewer = viewer
        gui = viewer.server.gui
        self.pose_boxes: dict[int, object] = {}
        self._drawn = 0.0
        with gui.add_folder("Scene"):
            render = gui.add_checkbox("Render", True, hint="nerfx's render of the camera; hide "
                                      "it to see the meshes and point clouds alone")
            render.on_update(lambda _: viewer.show_render(render.value))
            toggles = [("cameras", "Training cameras", True, None),
                       ("box", "Scene box", True, None),
                       ("cells", "Occupied cells", False, None)]
            toggles += [(f"geometry/{i}", item.label, item.visible, str(item.path))
                        for i, item in enumerate(viewer.overlays.geometry)]
            for name, label, on, hint in toggles:
                box = gui.add_checkbox(label, on, hint=hint)
                box.on_update(self._toggle(name, box))
                if not on:
                    viewer.overlays.set_visible(name, False)
            scene = viewer.overlays.scene
            self.crop = CropControls(viewer, gui, scene.aabb if scene is not None
                                     else [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
        self.numbers = self.pause = None
        if training:
            with gui.add_folder("Training"):
                self.numbers = gui.add_markdown("waiting for the first step")
                self.pause = gui.add_button("Pause training")
                self.pause.on_click(lambda _: self._toggle_pause())

    def _toggle(self, name: str, box):
        return lambda _: self.viewer.overlays.set_visible(name, box.value)

    def _toggle_pause(self) -> None:
        paused = self.viewer.paused
        if paused.is_set():
            paused.clear()
        else:
            paused.set()
        if self.pause is not None:
            self.pause.label = "Resume training" if paused.is_set() else "Pause training"

    def add_page(self, client) -> None:
        """The controls that belong to one page."""
        key = client.client_id
        with client.gui.add_folder("View"):
            mode = client.gui.add_dropdown("Mode", MODES, initial_value="rgb")
            mode.on_update(lambda _: self.viewer.scheduler.set_mode(key, mode.value))
            snap = client.gui.add_button("Snapshot")
            snap.on_click(lambda _: self.viewer.snapshot(key))
            self.pose_boxes[key] = client.gui.add_text(
                "Pose (JSON)", "{}", multiline=True,
                hint="this camera as a transforms.json frame (OpenGL camera-to-world)")
        with client.gui.add_folder("Camera path", expand_by_default=False):
            PathControls(self.viewer, client)

    def show_pose(self, client, camera: ViewCamera, width: int, height: int) -> None:
        """The pose box: the camera of the frame shown, with the frame's size."""
        box = self.pose_boxes.get(client.client_id)
        if box is not None:
            box.value = camera.transforms_json(width, height)

    def notify(self, key: int, text: str) -> None:
        client = self.viewer.server.get_clients().get(key)
        if client is not None:
            client.add_notification("nerfx", text, auto_close_seconds=6.0)

    def update_numbers(self, numbers: TrainingNumbers, budget: RenderBudget, paused: bool,
                       force: bool = False) -> None:
        now = time.monotonic()
        if self.numbers is None or (not force and now - self._drawn < REDRAW_SECONDS):
            return
        self._drawn = now
        self.numbers.content = "  \n".join(numbers.lines(budget, paused))


class CropControls:
    """The crop box: a checkbox, and the box's corners (at first the scene box), shown while it
    is on. Every page renders only what lies inside it (nerfx.view.crop)."""

    def __init__(self, viewer, gui, aabb: list[float]):
        self.viewer = viewer
        available = can_crop(viewer.scheduler.model)
        extent = max(b - a for a, b in zip(aabb[:3], aabb[3:], strict=True))
        self.enabled = gui.add_checkbox(
            "Crop", False, disabled=not available,
            hint="render only what lies inside a box" if available
            else "the crop needs an Instant-NGP or NeRF run")
        self.lo = gui.add_vector3("Crop min", tuple(aabb[:3]), step=extent / 100, visible=False)
        self.hi = gui.add_vector3("Crop max", tuple(aabb[3:]), step=extent / 100, visible=False)
        if not available:
            gui.add_markdown("the crop needs an Instant-NGP or NeRF run")
        for handle in (self.enabled, self.lo, self.hi):
            handle.on_update(lambda _: self.apply())

    def box(self) -> Box | None:
        return as_box(self.lo.value, self.hi.value) if self.enabled.value else None

    def apply(self) -> None:
        box = self.box()
        self.lo.visible = self.hi.visible = box is not None
        self.viewer.scheduler.set_crop(box)
        self.viewer.overlays.show_crop(box)


class PathControls:
    """Keyframes from the page's camera, played back in the page, rendered to a video."""

    def __init__(self, viewer, client):
        self.viewer, self.client = viewer, client
        self.keyframes: list[ViewCamera] = []
        gui = client.gui
        self.count = gui.add_markdown("no keyframes")
        self.seconds = gui.add_number("Seconds", 4.0, min=0.5, max=600.0, step=0.5)
        self.fps = gui.add_number("Frames/s", 24, min=1, max=60, step=1)
        for label, action in (("Add keyframe", self.add), ("Clear keyframes", self.clear),
                              ("Play", self.play), ("Render video", self.render)):
            gui.add_button(label).on_click(lambda _, action=action: action())

    def _camera(self) -> ViewCamera | None:
        page = self.viewer.scheduler.pages.get(self.client.client_id)
        return page.camera if page is not None else None

    def add(self) -> None:
        camera = self._camera()
        if camera is not None:
            self.keyframes.append(camera)
        self.count.content = f"{len(self.keyframes)} keyframes"

    def clear(self) -> None:
        self.keyframes = []
        self.count.content = "no keyframes"

    def play(self) -> None:
        """Moves the page's camera along the path in real time."""
        if len(self.keyframes) < 2:
            self.viewer.panels.notify(self.client.client_id, "a path needs two keyframes")
            return
        n = max(int(self.seconds.value * self.fps.value), 2)
        for camera in interpolate(self.keyframes, n):
            with self.client.atomic():
                self.client.camera.wxyz = camera.viser_wxyz()
                self.client.camera.position = camera.pose[:3, 3]
            time.sleep(1 / self.fps.value)

    def render(self) -> None:
        """Saves RUN/camera_path.json and renders RUN/camera_path.mp4 at full quality."""
        if len(self.keyframes) < 2:
            self.viewer.panels.notify(self.client.client_id, "a path needs two keyframes")
            return
        run = self.viewer.run
        save_path(run / "camera_path.json", self.keyframes, self.fps.value, self.seconds.value)
        self.viewer.panels.notify(self.client.client_id, "rendering the path ...")
        video = render_path(self.viewer.scheduler.view_model(), self.keyframes, self.fps.value,
                            self.seconds.value, run / "camera_path")
        self.viewer.panels.notify(self.client.client_id, f"video: {video}")
