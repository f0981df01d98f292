"""The small types every layer shares, at the bottom of the tree (nerfacc's data_specs.py):
what the ops return (Composited, RaySamples), the hash grid's table layout (GridLayout), the
occupancy grid's geometry (GridGeometry, numbers on the host) and the lookups every backend
agrees on (locate, occupied, clip_to_box).

Imports torch only: nerfx.ref, nerfx.ops and nerfx.render import it, never the reverse.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = ["Composited", "GridGeometry", "GridLayout", "RaySamples", "clip_to_box", "grid_layout",
           "locate", "occupied", "with_background"]


# --- results of the ops --------------------------------------------------------------------------

class Composited(NamedTuple):
    color: torch.Tensor  # [n_rays, 3]
    opacity: torch.Tensor  # [n_rays]
    depth: torch.Tensor  # [n_rays]
    weights: torch.Tensor  # [n_samples] (packed) or [n_rays, n_samples] (padded)


def with_background(out: Composited, background: torch.Tensor | None) -> Composited:
    """Blends a background colour ([3] or [n_rays, 3]) behind what the rays did not cover."""
    if background is None:
        return out
    color = out.color + (1 - out.opacity)[:, None] * background.to(out.color)
    return out._replace(color=color)


class RaySamples(NamedTuple):
    positions: torch.Tensor  # [S, 3] sample midpoints
    directions: torch.Tensor  # [S, 3] the ray direction of each sample
    t_start: torch.Tensor  # [S]
    t_end: torch.Tensor  # [S]
    offsets: torch.Tensor  # [n_rays + 1] int64: ray r owns samples offsets[r]:offsets[r + 1]
    ray_indices: torch.Tensor  # [S] int64
    resume: torch.Tensor  # [n_rays] where a capped ray's march continues; +inf once done



# --- the hash grid's table ---------------------------------------------------------------------

@dataclass(frozen=True)
class GridLayout:
    """Where each level lives in the flat parameter table."""

    n_input_dims: int
    n_features_per_level: int
    resolutions: tuple[int, ...]  # cells per axis, one per level
    offsets: tuple[int, ...]  # first row of each level, then the total row count
    dense: tuple[bool, ...]  # one row per vertex (no hashing) at this level

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def n_params(self) -> int:
        return self.offsets[-1] * self.n_features_per_level


@functools.lru_cache(maxsize=64)
def grid_layout(n_input_dims: int, n_levels: int, n_features_per_level: int,
                log2_hashmap_size: int, base_resolution: int,
                per_level_scale: float) -> GridLayout:
    """The table layout of a hash grid; the one definition every backend uses."""
    if n_input_dims not in (2, 3):
        raise ValueError(f"n_input_dims must be 2 or 3, got {n_input_dims}")
    if not 1 <= n_levels <= 32:
        raise ValueError(f"n_levels must be in [1, 32], got {n_levels}")
    if n_features_per_level not in (1, 2, 4, 8):
        raise ValueError(f"n_features_per_level must be 1, 2, 4 or 8, got {n_features_per_level}")
    if not 4 <= log2_hashmap_size <= 30:
        raise ValueError(f"log2_hashmap_size must be in [4, 30], got {log2_hashmap_size}")
    if base_resolution < 1 or per_level_scale < 1.0:
        raise ValueError("base_resolution must be >= 1 and per_level_scale >= 1")
    table_rows = 2**log2_hashmap_size
    resolutions, offsets, dense = [], [0], []
    for level in range(n_levels):
        # The tiny epsilon keeps N_min * b**l from flooring below an integer it should equal.
        res = int(base_resolution * per_level_scale**level + 1e-6)
        vertices = (res + 1) ** n_input_dims
        fits = vertices <= table_rows
        rows = min(-(-vertices // 8) * 8, table_rows) if fits else table_rows
        resolutions.append(res)
        offsets.append(offsets[-1] + rows)
        dense.append(fits)
    return GridLayout(n_input_dims, n_features_per_level, tuple(resolutions), tuple(offsets),
                      tuple(dense))



# --- the occupancy grid's geometry and lookups --------------------------------------------------

@dataclass(frozen=True)
class GridGeometry:
    center: tuple[float, float, float]
    half_size: tuple[float, float, float]  # half extent of cascade 0
    resolution: int
    cascades: int

    def box(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The outermost cascade's corners, float32 [3] each."""
        scale = float(2 ** (self.cascades - 1))
        center = torch.tensor(self.center, dtype=torch.float32, device=device)
        half = torch.tensor(self.half_size, dtype=torch.float32, device=device)
        return center - half * scale, center + half * scale


def locate(points: torch.Tensor, g: GridGeometry) -> torch.Tensor:
    """Flat cell index (cascade-major) of the smallest cascade holding each point. [M, 3] -> [M]"""
    center = torch.tensor(g.center, dtype=torch.float32, device=points.device)
    half = torch.tensor(g.half_size, dtype=torch.float32, device=points.device)
    u = (points - center) * (1.0 / half)  # [M, 3], multiplied by the reciprocal as the kernel is
    extent = u.abs().amax(-1)  # [M]
    _, exponent = torch.frexp(extent)
    cascade = torch.where(extent >= 1.0, exponent.clamp(max=g.cascades - 1),
                          torch.zeros_like(exponent)).long()
    inv_scale = 1.0 / (2.0 ** cascade.float())  # [M]
    cell = torch.floor((u * inv_scale[:, None] + 1.0) * 0.5 * float(g.resolution))
    cell = cell.clamp(0, g.resolution - 1).long()  # [M, 3]
    r = g.resolution
    return ((cascade * r + cell[:, 0]) * r + cell[:, 1]) * r + cell[:, 2]


def occupied(bitfield: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The bits of a packed [n_bits / 8] uint8 bitfield at flat indices. -> bool"""
    return ((bitfield[index >> 3].long() >> (index & 7)) & 1).bool()


def clip_to_box(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Entry, exit and hit flag of rays o + t d through the box. [N, 3] -> [N], [N], [N] bool"""
    moving = d != 0
    safe_d = torch.where(moving, d, torch.ones_like(d))
    t1 = (lo - o) / safe_d
    t2 = (hi - o) / safe_d
    inf = torch.full_like(t1, float("inf"))
    t_enter = torch.where(moving, torch.minimum(t1, t2), -inf).amax(-1)
    t_exit = torch.where(moving, torch.maximum(t1, t2), inf).amin(-1)
    inside_slabs = (moving | ((o >= lo) & (o <= hi))).all(-1)
    return t_enter, t_exit, inside_slabs & (t_enter <= t_exit)


# Instant-NGP's minimal marching step is sqrt(3) / 1024 of the cascade-0 box's side
# (MIN_CONE_STEPSIZE(), NERF_STEPS() = 1024 in instant-ngp's src/nerf_device.cuh).
PAPER_STEPS_PER_BOX = 1024


def paper_step_size(box_side: float, steps_per_box: int = PAPER_STEPS_PER_BOX) -> float:
    """The marching step, in the box's units: sqrt(3) / steps_per_box of its largest side."""
    return math.sqrt(3) / steps_per_box * box_side
