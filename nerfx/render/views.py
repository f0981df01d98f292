"""Whole images from a trained pipeline: views rendered in chunks of rays, depth pictures and
turntable videos (written by nerfx.images.write_video).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from nerfx.cameras import image_rays, turntable_poses
from nerfx.images import to_uint8, write_video
from nerfx.specs import Composited


class Renderable(Protocol):
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited: ...


@torch.no_grad()
def render_view(pipeline: Renderable, pose: torch.Tensor, intrinsics: torch.Tensor, width: int,
                height: int, background: torch.Tensor | None = None,
                chunk: int = 2**14) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """pose [4, 4] camera-to-world, intrinsics [4] (fx, fy, cx, cy) or [11] with the lens
    (nerfx.cameras) -> (rgb [H, W, 3] in [0, 1], depth [H, W], opacity [H, W]), all on the CPU.

    Rays go through the pipeline `chunk` at a time, so memory stays bounded at any resolution.
    """
    rgbs, depths, opacities = [], [], []
    for start in range(0, height * width, chunk):
        o, d = image_rays(pose, intrinsics, width, height, start,
                          min(start + chunk, height * width))
        out = pipeline.render(o, d, background)
        rgbs.append(out.color.float().clamp(0, 1).cpu())
        depths.append(out.depth.float().cpu())
        opacities.append(out.opacity.float().cpu())
    return (torch.cat(rgbs).reshape(height, width, 3), torch.cat(depths).reshape(height, width),
            torch.cat(opacities).reshape(height, width))


def depth_picture(depth: torch.Tensor, opacity: torch.Tensor) -> np.ndarray:
    """Expected depth [H, W] -> grey uint8 [H, W], near bright, far dark, empty pixels black.

    Depth is normalised over the pixels the model covers (opacity > 0.5), so the object fills
    the grey range whatever the scene's scale.
    """
    covered = opacity > 0.5
    if not bool(covered.any()):
        return np.zeros(depth.shape, dtype=np.uint8)
    surface = depth / opacity.clamp(min=1e-6)  # depth of the surface rather than expected depth
    lo, hi = surface[covered].min(), surface[covered].max()
    shade = 1 - (surface - lo) / (hi - lo).clamp(min=1e-6)
    shade = torch.where(covered, 0.2 + 0.8 * shade.clamp(0, 1), torch.zeros_like(shade))
    return (shade.numpy() * 255 + 0.5).astype(np.uint8)


def render_turntable(pipeline, camera: dict, turntable: dict, n_frames: int, stem: Path,
                     progress: bool = True) -> Path:
    """Renders n_frames around the scene on white and writes stem.mp4 (or .gif)."""
    device = next(pipeline.parameters()).device
    white = torch.ones(3, device=device)
    # The turntable is a virtual pinhole camera: the test camera's lens, if any, is left out.
    intrinsics = torch.tensor(camera["intrinsics"][:4], device=device)
    frames = []
    poses = turntable_poses(n_frames, turntable["radius"], turntable["elevation_deg"],
                            tuple(turntable["center"]))
    for pose in tqdm(poses, desc="turntable", unit="frame", disable=not progress, leave=False):
        rgb = render_view(pipeline, pose.to(device), intrinsics, camera["width"],
                          camera["height"], white)[0]
        frames.append(to_uint8(rgb, (0.0, 1.0)))
    return write_video(frames, stem)
