"""The coordinates and density units of an export: the dataset's world against the run's.

A run trains in its own world: a NeRF-synthetic scene as its transforms files give it (the box
[-1.5, 1.5]^3), an Instant-NGP folder after its `scale` and `offset` moved it into the unit cube
(nerfx.data.scenes.load_scene, as instant-ngp does). Exports are written in the dataset's world
(the coordinates of its transforms file), so they line up with the cameras and other tools:

    x_run = x_dataset * scale + offset

Density is per unit length, so it changes with the unit: sigma_run = sigma_dataset / scale.
Thresholds are given in the dataset's unit (the unit the mesh is written in). instant-ngp's
marching-cubes threshold, 2.5 by default, is a density in its own normalised box, into which it
scales a NeRF-synthetic scene by 0.33 (its default NERF_SCALE) and an Instant-NGP folder by the
folder's `scale`: the same surface in the dataset's unit is the threshold times that factor.
nerfx's default is 25 in that box (8.25 per unit of a NeRF-synthetic scene): on the CPU --fast
lego it scored F@1% 0.915 where 2.5 scored 0.827, with fewer floaters (the sweep is in
benches/RESULTS.md, "Mesh export, CPU").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfx.data.scenes import is_nerf_synthetic

# instant-ngp's default marching-cubes density threshold, in its normalised box
# (src/testbed.cu: m_mesh.thresh = 2.5; the GUI's "MC density threshold").
NGP_MESH_THRESHOLD = 2.5
# nerfx's default, in the same unit, picked by a sweep from 0.5 to 50 on the CPU --fast lego:
# F@1% 0.915 (2.5: 0.827; 50: 0.918 with less recall and more faces); benches/RESULTS.md,
# "Mesh export, CPU".
DEFAULT_NGP_THRESHOLD = 25.0
# instant-ngp's scale of a NeRF-synthetic scene into its box (NERF_SCALE = 0.33,
# include/neural-graphics-primitives/nerf_loader.h), offset 0.5.
NGP_SYNTHETIC_SCALE = 0.33


@dataclass(frozen=True)
class SceneFrame:
    """x_run = x_dataset * scale + offset; ngp_scale: lengths in instant-ngp's box per dataset
    unit (what converts instant-ngp's density thresholds)."""

    scale: float = 1.0
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    ngp_scale: float = NGP_SYNTHETIC_SCALE

    def to_dataset(self, x_run: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Points [..., 3] of the run's world -> the dataset's."""
        offset = _like(self.offset, x_run)
        return (x_run - offset) / self.scale

    def to_run(self, x_dataset: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Points [..., 3] of the dataset's world -> the run's."""
        return x_dataset * self.scale + _like(self.offset, x_dataset)

    def pose_to_dataset(self, pose_run: np.ndarray) -> np.ndarray:
        """A camera-to-world [4, 4] of the run's world -> the dataset's (rotation unchanged)."""
        pose = np.array(pose_run, dtype=np.float64)
        pose[:3, 3] = (pose[:3, 3] - np.asarray(self.offset)) / self.scale
        return pose

    def density_to_run(self, sigma_dataset: float) -> float:
        """A density per dataset unit -> per run unit."""
        return sigma_dataset / self.scale

    def density_to_dataset(self, sigma_run: float) -> float:
        return sigma_run * self.scale

    def from_ngp(self, sigma_ngp: float) -> float:
        """A density in instant-ngp's normalised box -> per dataset unit."""
        return sigma_ngp * self.ngp_scale

    @property
    def default_threshold(self) -> float:
        """DEFAULT_NGP_THRESHOLD in instant-ngp's box, as a density per dataset unit."""
        return self.from_ngp(DEFAULT_NGP_THRESHOLD)


def _like(values: tuple[float, ...], x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(x, torch.Tensor):
        return torch.tensor(values, dtype=x.dtype, device=x.device)
    return np.asarray(values, dtype=x.dtype if np.issubdtype(x.dtype, np.floating) else None)


def scene_frame(scene_folder: str | Path) -> SceneFrame:
    """The frame of a scene folder, as load_scene applies it: NeRF-synthetic folders are used as
    they are; an Instant-NGP transforms.json's `scale` (default 0.33) and `offset` (default 0.5
    per axis) move it into the unit cube."""
    folder = Path(scene_folder)
    if is_nerf_synthetic(folder):
        return SceneFrame()
    meta = json.loads((folder / "transforms.json").read_text())
    scale = float(meta.get("scale", NGP_SYNTHETIC_SCALE))
    offset = meta.get("offset", (0.5, 0.5, 0.5))
    offset = [offset] * 3 if not isinstance(offset, list | tuple) else offset
    return SceneFrame(scale, tuple(float(v) for v in offset), ngp_scale=scale)
