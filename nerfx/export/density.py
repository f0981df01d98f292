"""The field's density sampled on a lattice over a box, in chunks with bounded memory.

Which cells may be skipped: the occupancy grid marks a cell empty when the optical thickness of
one marching step there, sigma * dt, is below its cut-off min(0.01, mean) (nerfx.render.occupancy).
A surface at density `threshold` has thickness threshold * dt. Only when that exceeds the
cut-off does "empty" imply "below the threshold": then lattice points in empty cells are set to 0
without querying the field; otherwise every point is queried.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from nerfx.render.occupancy import OccupancyGrid
from nerfx.specs import locate, occupied

# Bytes per lattice point while meshing: the float32 density volume plus scikit-image's
# marching-cubes working set, which measured at about 3 more floats per point (256^3 and 384^3 on
# the lego; benches/RESULTS.md), so 16 in all.
BYTES_PER_POINT = 16
CHUNK = 2**18  # points per field query: 2^18 * (32 + 64 + 16) floats ~ 120 MB of activations


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says why and what to do."""


@dataclass
class RadianceField:
    """What an export needs of a trained pipeline, in the run's world units.

    density(x [N, 3]) -> sigma [N] (1 / run unit); color(x [N, 3], d [N, 3]) -> rgb [N, 3] in
    [0, 1]; grid and step_size: the occupancy grid and the marching step it stores thickness
    for (None for a field without one)."""

    density: Callable[[torch.Tensor], torch.Tensor]
    color: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    box: tuple[float, ...]  # [6] the scene box (cascade 0), run units
    grid: OccupancyGrid | None = None
    step_size: float | None = None
    device: torch.device = torch.device("cpu")


def radiance_field(pipeline: nn.Module) -> RadianceField:
    """The field of an Instant-NGP pipeline (`.field`, `.grid`, `.step_size`), of a NeRF
    pipeline (its fine network over its box), or of any module with `.field` (density(x) and
    field(x, d) -> (sigma, rgb)) and `.aabb` [6] or `.grid`."""
    if hasattr(pipeline, "nerf"):  # NeRF: the fine MLP is the one that renders
        fine = pipeline.nerf.fine
        box = tuple(pipeline.nerf.aabb.tolist())
        device = pipeline.nerf.aabb.device
        return RadianceField(lambda x: fine(x, torch.zeros_like(x))[0],
                             lambda x, d: fine(x, d)[1], box, device=device)
    field = pipeline.field
    grid = getattr(pipeline, "grid", None)
    aabb = grid.aabb if grid is not None else pipeline.aabb
    device = aabb.device
    return RadianceField(field.density, lambda x, d: field(x, d)[1], tuple(aabb.tolist()), grid,
                         getattr(pipeline, "step_size", None), device)


def lattice_shape(box: tuple[float, ...], resolution: int) -> tuple[int, int, int]:
    """Points per axis: `resolution` along the box's longest side, the same spacing on the
    others (cubic cells), at least 2."""
    sides = [box[3 + i] - box[i] for i in range(3)]
    spacing = max(sides) / (resolution - 1)
    return tuple(max(2, round(side / spacing) + 1) for side in sides)  # type: ignore[return-value]


def available_memory() -> int:
    """Bytes of memory available now (Linux MemAvailable), else the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(shape: tuple[int, int, int]) -> None:
    """Refuses a lattice whose meshing would not fit in the memory available now."""
    need = math.prod(shape) * BYTES_PER_POINT
    have = available_memory()
    if need > have:
        raise ExportError(f"a {'x'.join(map(str, shape))} lattice needs about {need / 2**30:.1f} "
                          f"GiB to mesh and {have / 2**30:.1f} GiB are available: lower "
                          "--resolution or --crop to the object")


def can_skip_empty(field: RadianceField, threshold_run: float) -> bool:
    """Whether the occupancy grid's empty cells are certainly below the threshold (module
    docstring): threshold * step_size above the grid's cut-off min(threshold, mean of cascade 0)."""
    grid = field.grid
    if grid is None or field.step_size is None:
        return False
    inner = grid.optical_thickness[: grid.resolution**3].clamp(min=0)
    cutoff = min(grid.threshold, float(inner.mean()))
    return threshold_run * field.step_size > cutoff


@torch.no_grad()
def density_lattice(field: RadianceField, box: tuple[float, ...], shape: tuple[int, int, int],
                    *, skip_empty: bool = False, chunk: int = CHUNK,
                    progress: bool = True) -> np.ndarray:
    """sigma (1 / run unit) at the lattice points over `box` (run units), [nx, ny, nz] float32,
    index [i, j, k] at box_lo + (i, j, k) * spacing. Evaluated a slab of x at a time, each in
    chunks of `chunk` points, on the field's device."""
    nx, ny, nz = shape
    device = field.device
    axes = [torch.linspace(box[i], box[3 + i], n, device=device) for i, n in enumerate(shape)]
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    volume = np.zeros(shape, dtype=np.float32)
    slabs = max(1, chunk // (ny * nz))  # x-slices per slab
    bar = tqdm(total=nx, desc="density", unit="slice", disable=not progress, leave=False)
    for x0 in range(0, nx, slabs):
        xs = axes[0][x0:x0 + slabs]  # [s]
        points = torch.cat([xs.repeat_interleave(yz.shape[0])[:, None],
                            yz.repeat(xs.numel(), 1)], -1)  # [s * ny * nz, 3]
        sigma = torch.zeros(points.shape[0], device=device)  # [s * ny * nz]
        keep = torch.ones_like(sigma, dtype=torch.bool)
        if skip_empty:  # points beyond the outermost cascade are always queried
            g = field.grid.geometry
            u = (points - torch.tensor(g.center, device=device)) / torch.tensor(g.half_size,
                                                                                 device=device)
            outside = u.abs().amax(-1) >= 2 ** (g.cascades - 1)
            keep = occupied(field.grid.bitfield, locate(points, g)) | outside
        index = torch.nonzero(keep).flatten()
        for i in range(0, index.numel(), chunk):
            part = index[i:i + chunk]
            sigma[part] = field.density(points[part]).float()
        volume[x0:x0 + xs.numel()] = sigma.reshape(xs.numel(), ny, nz).cpu().numpy()
        bar.update(xs.numel())
    bar.close()
    return volume
