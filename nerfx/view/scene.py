"""What the page shows around the render: the training cameras as frustums with thumbnails
(click one to fly to it), the scene box, the occupancy grid's occupied cells (capped), the crop
box, and exported meshes and point clouds (nerfx.view.geometry)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nerfx.view.camera import frustum_orientation
from nerfx.view.crop import Box, is_empty
from nerfx.view.geometry import Geometry, add_to_scene

MAX_FRUSTUMS = 300         # cameras drawn at most (evenly spread over the training set)
MAX_CELLS = 20_000         # occupied cells drawn at most (a GPU grid has millions)
THUMBNAIL = 64             # pixels, the long side of a frustum's picture


@dataclass
class ViewScene:
    """The scene as the viewer draws it. poses [N, 4, 4] camera-to-world (OpenGL);
    intrinsics [N, 4 or 11]; images [N, H, W, 3 or 4] uint8 or None; aabb [6], the box the
    field fills; occupied: () -> cell centres [M, 3] of the occupancy grid, or None."""

    poses: torch.Tensor
    intrinsics: torch.Tensor
    width: int
    height: int
    aabb: list[float]
    images: torch.Tensor | None = None
    occupied: Callable[[], np.ndarray] | None = None

    def center(self) -> np.ndarray:
        a = np.asarray(self.aabb, dtype=np.float64)
        return (a[:3] + a[3:]) / 2

    def home_position(self) -> np.ndarray:
        """Where a new page's camera starts: behind the first training camera, looking at the
        centre (so that its frustum is in view)."""
        if len(self.poses):
            position = self.poses[0, :3, 3].double().numpy()
            return self.center() + 1.3 * (position - self.center())
        return self.center() + np.array([0.0, -3.0, 2.0])


def grid_cells(grid, limit: int = MAX_CELLS) -> np.ndarray:
    """Centres of the occupied cells of an nerfx.render.OccupancyGrid's innermost cascade,
    at most `limit` of them (an even random subset). -> [M, 3] float32"""
    r = grid.resolution
    cells = torch.arange(r**3, device=grid.bitfield.device)
    centres = grid.cell_points(cells, jitter=False)
    centres = centres[grid.occupied_at(centres)]
    if len(centres) > limit:
        keep = torch.randperm(len(centres), generator=torch.Generator().manual_seed(0))[:limit]
        centres = centres[keep.to(centres.device)]
    return centres.float().cpu().numpy()


class SceneOverlays:
    """The frustums, box, cells and geometry files in a viser scene, each toggled by
    `set_visible` (a geometry file by the name `geometry/<i>`); the crop box by `show_crop`."""

    def __init__(self, server, scene: ViewScene | None, geometry: list[Geometry] | None = None):
        self.server, self.scene = server, scene
        self.handles: dict[str, list] = {"cameras": [], "box": [], "cells": [], "crop": []}
        self.geometry = list(geometry or [])
        extent = float(np.max(np.asarray(scene.aabb[3:]) - np.asarray(scene.aabb[:3]))) \
            if scene is not None else 3.0
        for i, item in enumerate(self.geometry):
            self.handles[f"geometry/{i}"] = [add_to_scene(server, str(i), item, extent / 400)]
        if scene is None:
            return
        self._add_cameras(scene)
        lo, hi = np.asarray(scene.aabb[:3]), np.asarray(scene.aabb[3:])
        self.handles["box"].append(server.scene.add_box(
            "/scene_box", color=(230, 120, 20), dimensions=tuple(hi - lo), wireframe=True,
            position=tuple((lo + hi) / 2), cast_shadow=False, receive_shadow=False))

    def _add_cameras(self, scene: ViewScene) -> None:
        n = len(scene.poses)
        chosen = np.unique(np.linspace(0, n - 1, min(n, MAX_FRUSTUMS)).round().astype(int)) \
            if n else []
        size = float(np.max(np.asarray(scene.aabb[3:]) - np.asarray(scene.aabb[:3])))
        step = max(1, math.ceil(max(scene.width, scene.height) / THUMBNAIL))
        for i in chosen:
            fy = float(scene.intrinsics[i, 1])
            wxyz, position = frustum_orientation(scene.poses[i])
            image = None
            if scene.images is not None:
                image = scene.images[i, ::step, ::step].float() / 255
                if image.shape[-1] == 4:      # RGBA over white, as training sees it
                    image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
                image = (image.numpy() * 255).astype(np.uint8)
            handle = self.server.scene.add_camera_frustum(
                f"/cameras/{i:04d}", fov=2 * math.atan(scene.height / 2 / fy),
                aspect=scene.width / scene.height, scale=0.06 * size, wxyz=wxyz,
                position=position, image=image, color=(40, 90, 200))
            handle.on_click(_fly_to(wxyz, position))
            self.handles["cameras"].append(handle)

    def set_visible(self, name: str, visible: bool) -> None:
        if name == "cells" and visible:
            self.show_cells()
        for handle in self.handles[name]:
            handle.visible = visible

    def show_crop(self, box: Box | None) -> None:
        """Draws the crop box as a wireframe (None: none)."""
        for handle in self.handles["crop"]:
            handle.remove()
        self.handles["crop"] = []
        if box is None or is_empty(box):
            return
        lo, hi = np.asarray(box[:3]), np.asarray(box[3:])
        self.handles["crop"].append(self.server.scene.add_box(
            "/crop_box", color=(220, 30, 160), dimensions=tuple(hi - lo), wireframe=True,
            position=tuple((lo + hi) / 2), cast_shadow=False, receive_shadow=False))

    def show_cells(self) -> None:
        """(Re)draws the occupied cells from the grid as it is now."""
        if self.scene is None or self.scene.occupied is None:
            return
        points = self.scene.occupied()
        size = float(np.max(np.asarray(self.scene.aabb[3:]) - np.asarray(self.scene.aabb[:3])))
        for handle in self.handles["cells"]:
            handle.remove()
        self.handles["cells"] = [self.server.scene.add_point_cloud(
            "/occupied_cells", points=points, colors=(20, 160, 90), point_size=size / 128,
            point_shape="square")]


def _fly_to(wxyz: np.ndarray, position: np.ndarray):
    def fly(event) -> None:
        with event.client.atomic():
            event.client.camera.wxyz = wxyz
            event.client.camera.position = position
    return fly
