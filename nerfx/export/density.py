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

# Bytes per lattice point while meshing, an estimate: the float32 density volume, its flat
# copy, and scikit-image's marching-cubes working set allowed 2 more floats per point. (The whole
# command peaked at 1.1 GB for 256^3, most of it torch and the libraries; benches/RESULTS.md.)
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
    index [i, j, k] at box_lo + (i, j, k) * spacing; 0 where skipped. The field runs on its
    device in chunks of `chunk` points; only the volume is held whole (on the host)."""
    device = field.device
    axes = [torch.linspace(box[i], box[3 + i], n, device=device) for i, n in enumerate(shape)]
    volume = torch.zeros(math.prod(shape))  # [nx * ny * nz] flat, host
    if skip_empty:
        wanted = torch.nonzero(occupied_lattice(field.grid, axes).flatten()).flatten()
    else:
        wanted = None
    total = math.prod(shape) if wanted is None else wanted.numel()
    nx, ny, nz = shape
    bar = tqdm(total=total, desc="density", unit="pt", unit_scale=True, disable=not progress,
               leave=False)
    for start in range(0, total, chunk):
        flat = (torch.arange(start, min(start + chunk, total), device=device) if wanted is None
                else wanted[start:start + chunk].to(device))  # [c] flat lattice indices
        points = torch.stack([axes[0][flat // (ny * nz)], axes[1][(flat // nz) % ny],
                              axes[2][flat % nz]], -1)  # [c, 3]
        volume[flat.cpu()] = field.density(points).float().cpu()
        bar.update(flat.numel())
    bar.close()
    return volume.reshape(shape).numpy()


def occupied_lattice(grid: OccupancyGrid, axes: list[torch.Tensor]) -> torch.Tensor:
    """Whether each lattice point (axes: the x, y and z coordinates [n_a]) lies in a cell the
    grid marks occupied, or outside every cascade (never skipped). -> [nx, ny, nz] bool.
    Inside cascade 0 a cell is a product of one index per axis, so the lookup is separable;
    points beyond it are located one by one."""
    g = grid.geometry
    r = g.resolution
    device = axes[0].device
    bits = torch.arange(8, device=device)
    cells = ((grid.bitfield[: r**3 // 8, None].long() >> bits) & 1).bool().reshape(r, r, r)
    index, inner = [], []
    for a, coords in enumerate(axes):
        u = (coords - g.center[a]) / g.half_size[a]  # [n_a], cascade 0 is [-1, 1]
        inner.append(u.abs() < 1)
        index.append(torch.floor((u + 1) * 0.5 * r).long().clamp(0, r - 1))
    keep = cells[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]]
    in_zero = inner[0][:, None, None] & inner[1][None, :, None] & inner[2][None, None, :]
    keep &= in_zero
    beyond = torch.nonzero(~in_zero.flatten()).flatten()  # [m] outside cascade 0
    if beyond.numel():
        _, ny, nz = keep.shape
        points = torch.stack([axes[0][beyond // (ny * nz)], axes[1][(beyond // nz) % ny],
                              axes[2][beyond % nz]], -1)
        u = (points - torch.tensor(g.center, device=device)) / torch.tensor(g.half_size,
                                                                             device=device)
        outside = u.abs().amax(-1) >= 2 ** (g.cascades - 1)
        keep.view(-1)[beyond] = occupied(grid.bitfield, locate(points, g)) | outside
    return keep
