"""A point cloud of a trained radiance field: one point per training-camera ray whose opacity
is high, at the ray's expected depth, with the ray's colour.

Rays go through random pixels of the training images (seeded). Rendered without a background,
a ray's colour and depth are sums over its samples' weights w_i (sum_i w_i c_i, sum_i w_i t_i)
and its opacity is sum_i w_i; the point is at o + d * depth / opacity (the expected depth given
that the ray stops in the scene) with colour sum_i w_i c_i / opacity.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from torch import nn
from tqdm import tqdm

from nerfx.cameras import camera_rays
from nerfx.data.scenes import Scene
from nerfx.export.density import ExportError
from nerfx.export.frame import SceneFrame

RAYS_PER_CHUNK = 2**14


@torch.no_grad()
def pointcloud(pipeline: nn.Module, scene: Scene, *, n: int = 100_000,
               min_opacity: float = 0.9, frame: SceneFrame | None = None, seed: int = 0,
               device: torch.device | str = "cpu",
               progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """-> (points [m, 3] float32 in the dataset's coordinates, colours [m, 3] uint8), m <= n:
    fewer only when the training pixels run out."""
    if n < 1:
        raise ExportError(f"--n must be at least 1, got {n}")
    if not 0 < min_opacity < 1:
        raise ExportError(f"min opacity must be in (0, 1), got {min_opacity}")
    frame = frame or SceneFrame()
    generator = torch.Generator().manual_seed(seed)
    pixels = len(scene) * scene.height * scene.width
    order = torch.randperm(pixels, generator=generator)  # every training pixel once, shuffled
    points, colors, kept, tried = [], [], 0, 0
    bar = tqdm(total=n, desc="points", unit="pt", disable=not progress, leave=False)
    while kept < n and tried < pixels:
        flat = order[tried:tried + RAYS_PER_CHUNK]
        tried += flat.numel()
        view, pixel = flat // (scene.height * scene.width), flat % (scene.height * scene.width)
        o, d = camera_rays(scene.poses[view], scene.intrinsics[view],
                           (pixel % scene.width).float(), (pixel // scene.width).float())
        out = pipeline.render(o.to(device), d.to(device), None)  # no background
        good = out.opacity >= min_opacity  # [r]
        opacity = out.opacity[good, None]
        x = o.to(device)[good] + d.to(device)[good] * (out.depth[good, None] / opacity)
        rgb = (out.color[good] / opacity).clamp(0, 1)  # [g, 3]
        take = min(n - kept, x.shape[0])
        points.append(x[:take].cpu().double())
        colors.append((rgb[:take] * 255 + 0.5).to(torch.uint8).cpu())
        kept += take
        bar.update(take)
    bar.close()
    if kept == 0:
        raise ExportError(f"no training ray reaches opacity {min_opacity} (of {tried} tried): "
                          "is the run trained? try a lower --min-opacity")
    xyz = frame.to_dataset(torch.cat(points).numpy()).astype(np.float32)
    return xyz, torch.cat(colors).numpy()


def pointcloud_bytes(points: np.ndarray, colors: np.ndarray) -> bytes:
    """Binary PLY: x, y, z float32 and red, green, blue uchar per vertex."""
    alpha = np.full((len(colors), 1), 255, dtype=np.uint8)
    cloud = trimesh.PointCloud(points, colors=np.concatenate([colors, alpha], 1))
    return trimesh.exchange.ply.export_ply(cloud, encoding="binary")
