"""Instant-NGP's occupancy grid: a density estimate per cell, thresholded into a packed bitfield
that the ray marcher reads to skip empty space.

State lives in buffers, so the grid saves and loads with the model's state_dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nerfx.ref.raymarch import GridGeometry, locate, occupied


class OccupancyGrid(nn.Module):
    """resolution^3 cells per cascade; cascade c covers the aabb's center +- half size * 2^c.

    aabb: [6] (x_min, y_min, z_min, x_max, y_max, z_max) of cascade 0. Every cell starts
    occupied. update() follows the paper's schedule: every `update_every` steps, decay all
    densities by `decay`, re-evaluate all cells during the first `warmup_steps` steps and then a
    quarter of the cells uniformly plus as many occupied ones, and mark a cell occupied when its
    density exceeds min(threshold, mean density).
    """

    def __init__(self, aabb: Sequence[float] | torch.Tensor, resolution: int = 128,
                 cascades: int = 1, decay: float = 0.95, threshold: float = 0.01,
                 update_every: int = 16, warmup_steps: int = 256):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).flatten()
        if aabb.numel() != 6 or not bool((aabb[3:] > aabb[:3]).all()):
            raise ValueError(f"OccupancyGrid: aabb must be [x0, y0, z0, x1, y1, z1] with x1 > x0, "
                             f"got {aabb.tolist()}")
        if resolution < 2 or resolution % 2 or not 1 <= cascades <= 8:
            raise ValueError("OccupancyGrid: resolution must be even and cascades in [1, 8]")
        self.resolution, self.cascades = resolution, cascades
        self.decay, self.threshold = decay, threshold
        self.update_every, self.warmup_steps = update_every, warmup_steps
        n_cells = cascades * resolution**3
        self.register_buffer("aabb", aabb)
        self.register_buffer("density", torch.zeros(n_cells))
        self.register_buffer("visible", torch.ones(n_cells, dtype=torch.bool))
        self.register_buffer("bitfield", torch.full((n_cells // 8,), 255, dtype=torch.uint8))

    @property
    def geometry(self) -> GridGeometry:
        lo, hi = self.aabb[:3].tolist(), self.aabb[3:].tolist()
        center = tuple((a + b) / 2 for a, b in zip(lo, hi, strict=True))
        half = tuple((b - a) / 2 for a, b in zip(lo, hi, strict=True))
        return GridGeometry(center, half, self.resolution, self.cascades)

    def cell_points(self, cells: torch.Tensor, jitter: bool = True,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """World positions inside flat cells [M] (centres, or uniformly jittered). -> [M, 3]"""
        r = self.resolution
        xyz = torch.stack([(cells // (r * r)) % r, (cells // r) % r, cells % r], -1).float()
        cascade = (cells // r**3).float()[:, None]
        offset = (torch.rand(xyz.shape, generator=generator, device=xyz.device) if jitter
                  else torch.full_like(xyz, 0.5))
        u = ((xyz + offset) / r * 2 - 1) * 2**cascade  # [-1, 1] * 2^cascade
        g = self.geometry
        center = torch.tensor(g.center, device=cells.device)
        half = torch.tensor(g.half_size, device=cells.device)
        return center + u * half

    def occupied_at(self, points: torch.Tensor) -> torch.Tensor:
        """Whether each point [M, 3] lies in an occupied cell. -> [M] bool"""
        return occupied(self.bitfield, locate(points.float(), self.geometry))

    @torch.no_grad()
    def update(self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor],
               chunk: int = 2**18, generator: torch.Generator | None = None) -> bool:
        """Re-estimates densities on the paper's schedule; True when this step updated."""
        if step % self.update_every:
            return False
        device = self.density.device
        if step < self.warmup_steps:
            cells = torch.arange(self.density.numel(), device=device)
        else:
            quarter = max(self.density.numel() // 4, 1)
            uniform = torch.randint(0, self.density.numel(), (quarter,), device=device,
                                    generator=generator)
            occupied_cells = torch.nonzero(self.density > self._cutoff()).flatten()
            if occupied_cells.numel():
                pick = torch.randint(0, occupied_cells.numel(), (quarter,), device=device,
                                     generator=generator)
                uniform = torch.cat([uniform, occupied_cells[pick]])
            cells = uniform
        points = self.cell_points(cells, generator=generator)
        fresh = torch.cat([density_fn(points[i:i + chunk]).reshape(-1).float()
                           for i in range(0, points.shape[0], chunk)])
        decayed = self.density * self.decay
        decayed[cells] = torch.maximum(decayed[cells], fresh)
        self.density.copy_(torch.where(self.visible, decayed, torch.zeros_like(decayed)))
        self._pack()
        return True

    def _cutoff(self) -> float:
        seen = self.density[self.visible]
        mean = float(seen.mean()) if seen.numel() else 0.0
        return min(self.threshold, mean)

    def _pack(self) -> None:
        bits = (self.density > self._cutoff()) & self.visible  # [n_cells]
        weights = 2 ** torch.arange(8, device=bits.device)
        self.bitfield.copy_((bits.view(-1, 8).long() * weights).sum(-1).to(torch.uint8))

    @torch.no_grad()
    def mark_unseen_empty(self, camera_to_world: torch.Tensor, focal: tuple[float, float],
                          principal: tuple[float, float], size: tuple[int, int],
                          near: float = 0.0) -> int:
        """Marks cells that no camera sees as empty for good; returns how many.

        camera_to_world: [n_cams, 4, 4] (OpenGL/NeRF convention: camera looks down -z),
        focal (fx, fy), principal point (cx, cy) and image size (width, height) in pixels.
        """
        centers = self.cell_points(torch.arange(self.density.numel(), device=self.density.device),
                                   jitter=False)  # [n_cells, 3]
        seen = torch.zeros(centers.shape[0], dtype=torch.bool, device=centers.device)
        world_to_camera = torch.linalg.inv(camera_to_world.float().to(centers.device))
        for w2c in world_to_camera:
            cam = centers @ w2c[:3, :3].T + w2c[:3, 3]  # [n_cells, 3]
            depth = -cam[:, 2]
            x = focal[0] * cam[:, 0] / depth.clamp(min=1e-6) + principal[0]
            y = -focal[1] * cam[:, 1] / depth.clamp(min=1e-6) + principal[1]
            seen |= (depth > near) & (x >= 0) & (x < size[0]) & (y >= 0) & (y < size[1])
        self.visible &= seen
        self._pack()
        return int((~seen).sum())

    def occupied_fraction(self) -> float:
        return float(((self.density > self._cutoff()) & self.visible).float().mean())
