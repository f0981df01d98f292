"""What the viewer shows, taken from a scene and a pipeline: a finished run's, or a training
task's (the command line wires the latter; the viewer never imports a trainer)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from nerfx.data.scenes import Scene, SceneError, load_scene
from nerfx.metrics import psnr
from nerfx.render.views import render_view
from nerfx.view.scene import ViewScene, grid_cells


def scene_view(scene: Scene, pipeline) -> ViewScene:
    """A scene's training cameras and box, and the pipeline's occupancy grid when it has one."""
    grid = getattr(pipeline, "grid", None)
    return ViewScene(scene.poses, scene.intrinsics, scene.width, scene.height,
                     list(scene.aabb), scene.images,
                     occupied=(lambda: grid_cells(grid)) if grid is not None else None)


def run_scene(config: dict, pipeline) -> ViewScene:
    """The training cameras of a run (config.json's scene folder). Where that folder is gone,
    only the box shows, with a warning."""
    try:
        scene = load_scene(Path(config["scene"]), "train", downscale=config["load_downscale"],
                           test_every=config["settings"].get("test_every", 8))
    except (SceneError, OSError, KeyError) as exc:
        warnings.warn(f"nerfx.view: the training cameras are not shown ({exc})", stacklevel=2)
        grid = getattr(pipeline, "grid", None)
        return ViewScene(torch.zeros(0, 4, 4), torch.zeros(0, 4), 1, 1,
                         list(config["pipeline"]["aabb"]),
                         occupied=(lambda: grid_cells(grid)) if grid is not None else None)
    return scene_view(scene, pipeline)


def held_view_psnr(model, scene: Scene, view: int = 0) -> float:
    """PSNR of the model's render of one test view against its image (on white)."""
    device = next(model.parameters()).device
    image = scene.images[view].float() / 255
    if image.shape[-1] == 4:
        image = image[..., :3] * image[..., 3:] + (1 - image[..., 3:])
    rgb = render_view(model, scene.poses[view].to(device), scene.intrinsics[view].to(device),
                      scene.width, scene.height, torch.ones(3, device=device))[0]
    return psnr(rgb, image)
