"""Instant-NGP's occupancy grid: per cell, the optical thickness of one minimal marching step,
thresholded into a packed bitfield that the ray marcher reads to skip empty space.

What is stored, and why. A cell holds sigma * dt: the density sigma (1 / world unit) that the
field gives inside the cell, times the smallest step dt the marcher takes (world units), i.e.
the optical thickness of one step, dimensionless; 1 - exp(-sigma * dt) is that step's opacity.
A cell is occupied when its thickness exceeds min(0.01, mean thickness): a minimal step there
would absorb more than about 1 % of the light (Mueller et al. 2022, appendix E.2: "thresholding
the opacity of a minimal ray marching step by 1 - exp(-0.01) ~ 0.01", i.e. a density of
0.01 * 1024 / sqrt(3) in the unit cube; instant-ngp src/testbed_nerf.cu writes
`density * MIN_CONE_STEPSIZE()` in splat_grid_samples_nerf_max_nearest_neighbor and keeps a cell
when it exceeds `min(NERF_MIN_OPTICAL_THICKNESS(), mean)` in grid_to_bitfield). Thresholding
sigma itself would be in the wrong units: with dt = sqrt(3)/1024 of a 3-unit box a density of
0.01 is an opacity of 5e-5 per step, so nearly empty space would stay occupied.

State lives in buffers, so the grid saves and loads with the model's state_dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from nerfx.cameras import project
from nerfx.specs import GridGeometry, locate, occupied, paper_step_size

# Dimensionless optical thickness of one minimal step above which a cell is occupied (instant-ngp
# NERF_MIN_OPTICAL_THICKNESS() = 0.01; paper appendix E.2).
MIN_OPTICAL_THICKNESS = 0.01


def box_step_size(aabb: Sequence[float] | torch.Tensor) -> float:
    """Instant-NGP's minimal step for the box `aabb` (world units)."""
    aabb = torch.as_tensor(aabb, dtype=torch.float32).flatten()
    return paper_step_size(float((aabb[3:] - aabb[:3]).max()))


class OccupancyGrid(nn.Module):
    """resolution^3 cells per cascade; cascade c covers the aabb's center +- half size * 2^c.

    aabb: [6] (x_min, y_min, z_min, x_max, y_max, z_max) of cascade 0. Every cell starts
    occupied. `optical_thickness` [cascades * resolution^3] holds sigma * dt per cell (see the
    module docstring), dt being `step_size` (world units), the minimal step of the marcher that
    reads the grid; the same dt serves every cascade, as in instant-ngp (its per-cascade factor
    2^level is commented out in splat_grid_samples_nerf_max_nearest_neighbor), which is exact
    for nerfx's constant-step march and conservative (keeps more cells) under cone steps.

    update() follows instant-ngp's code: it runs on steps that are multiples of
    clamp(step // 16, 1, update_every) (every step at first, every 16 from step 256;
    src/testbed.cu, Testbed::train's n_prep_to_skip), decays every cell's thickness by `decay`,
    re-evaluates all cells during the first `warmup_steps` steps (or a bounded sweep through them,
    `warmup_cells`) and then a quarter of the seen
    cells uniformly plus as many cells above the threshold (keeping the maximum of the decayed
    and the fresh value, and of duplicate samples), and marks a cell occupied when its thickness
    exceeds min(threshold, mean thickness of cascade 0) (instant-ngp: grid_to_bitfield, with the
    mean of max(value, 0) over cascade 0's cells; cells no camera sees count as 0 and are never
    sampled again).
    """

    def __init__(self, aabb: Sequence[float] | torch.Tensor, resolution: int = 128,
                 cascades: int = 1, decay: float = 0.95,
                 threshold: float = MIN_OPTICAL_THICKNESS, update_every: int = 16,
                 warmup_steps: int = 256, warmup_cells: int | None = None):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).flatten()
        if aabb.numel() != 6 or not bool((aabb[3:] > aabb[:3]).all()):
            raise ValueError(f"OccupancyGrid: aabb must be [x0, y0, z0, x1, y1, z1] with x1 > x0, "
                             f"got {aabb.tolist()}")
        if resolution < 2 or resolution % 2 or not 1 <= cascades <= 8:
            raise ValueError("OccupancyGrid: resolution must be even and cascades in [1, 8]")
        if cascades > 1 and resolution % 4:  # the march's empty-cell skip needs it
            raise ValueError(f"OccupancyGrid: with {cascades} cascades the resolution must be a "
                             f"multiple of 4, got {resolution}")
        self.resolution, self.cascades = resolution, cascades
        self.decay, self.threshold = decay, threshold
        self.update_every, self.warmup_steps = update_every, warmup_steps
        # At most this many cells per warm-up update (None: all the seen cells, instant-ngp's
        # rule): a sweep through the seen cells, every k-th from a phase that advances each
        # update, so each cell is still evaluated once every k = ceil(seen / warmup_cells)
        # updates (the first update takes them all) and the warm-up's cost per update is bounded
        # (the CPU recipe's).
        if warmup_cells is not None and warmup_cells < 1:
            raise ValueError(f"OccupancyGrid: warmup_cells must be >= 1, got {warmup_cells}")
        self.warmup_cells = warmup_cells
        n_cells = cascades * resolution**3
        self.register_buffer("aabb", aabb)
        # sigma * dt per cell (dimensionless), dt = the step_size buffer.
        self.register_buffer("optical_thickness", torch.zeros(n_cells))
        # The dt (world units) the thickness is measured with; 0 until the first update.
        self.register_buffer("step_size", torch.zeros(()))
        self.register_buffer("visible", torch.ones(n_cells, dtype=torch.bool))
        self.register_buffer("bitfield", torch.full((n_cells // 8,), 255, dtype=torch.uint8))
        self._geometry = self._geometry_of(aabb)

    @property
    def geometry(self) -> GridGeometry:
        """The box, resolution and cascades as host numbers, for march_rays. Read from `aabb`
        when it is set (construction, load_state_dict), not per call: no device sync."""
        return self._geometry

    def _geometry_of(self, aabb: torch.Tensor) -> GridGeometry:
        lo, hi = aabb[:3].tolist(), aabb[3:].tolist()
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
    def update(self, step: int, density_fn: Callable[[torch.Tensor], torch.Tensor], *,
               step_size: float, chunk: int = 2**18,
               generator: torch.Generator | None = None) -> bool:
        """Re-estimates the cells on the paper's schedule; True when this step updated.

        density_fn: world positions [M, 3] -> density sigma [M] (1 / world unit), the field's
        raw density. step_size: the marcher's minimal step dt (world units), the one passed to
        march_rays; the grid stores sigma * dt. A changed step_size rescales what is stored.
        """
        if not self.updates_at(step):
            return False
        self.set_step_size(step_size, repack=False)
        thickness = self.optical_thickness
        if step < self.warmup_steps:
            cells = torch.nonzero(self.visible).flatten()  # every cell a camera sees
            # The first warm-up update takes them all (no cell is left at 0); the phase follows
            # from the step alone, so a resumed run sweeps as an uninterrupted one does.
            phase = sum(1 for s in range(step) if self.updates_at(s))  # updates before this
            if self.warmup_cells is not None and cells.numel() > self.warmup_cells and phase:
                k = -(-cells.numel() // self.warmup_cells)  # updates per sweep
                cells = cells[phase % k::k]
        else:
            quarter = max(thickness.numel() // 4, 1)
            cells = torch.cat([self._pick(self.visible, quarter, generator),
                               self._pick(thickness > self.threshold, quarter, generator)])
        points = self.cell_points(cells, generator=generator)
        sigma = torch.cat([density_fn(points[i:i + chunk]).reshape(-1).float()
                           for i in range(0, points.shape[0], chunk)])
        fresh = sigma * step_size  # optical thickness of one minimal step
        thickness.mul_(self.decay)
        # Duplicate cells keep their largest sample (instant-ngp: atomicMax in the splat).
        thickness.scatter_reduce_(0, cells, fresh, reduce="amax")
        thickness.mul_(self.visible)
        self._pack()
        return True

    def updates_at(self, step: int) -> bool:
        """Whether update() re-estimates the grid at this step: instant-ngp's interval
        clamp(step // 16, 1, update_every) (every step until 32, every 16 from 256)."""
        return step % min(max(step // 16, 1), self.update_every) == 0

    def _pick(self, mask: torch.Tensor, n: int, generator: torch.Generator | None
              ) -> torch.Tensor:
        """n cells drawn uniformly (with replacement) among those where mask [n_cells] holds."""
        candidates = torch.nonzero(mask).flatten()
        if not candidates.numel():
            return candidates
        pick = torch.randint(0, candidates.numel(), (n,), device=mask.device,
                             generator=generator)
        return candidates[pick]

    @torch.no_grad()
    def set_step_size(self, step_size: float, repack: bool = True) -> None:
        """Re-expresses the stored thickness for a new minimal step (it is linear in dt)."""
        if not step_size > 0:
            raise ValueError(f"OccupancyGrid: step_size must be a positive length in world "
                             f"units, got {step_size}")
        old = float(self.step_size)
        if abs(old - step_size) <= 1e-6 * step_size:  # the buffer holds float32
            return
        if old > 0:
            self.optical_thickness.mul_(step_size / old)
        self.step_size.fill_(step_size)
        if repack and old > 0:
            self._pack()

    def _cutoff(self) -> float:
        cascade0 = self.optical_thickness[: self.resolution**3]
        return min(self.threshold, float(cascade0.clamp(min=0).mean()))

    def _pack(self) -> None:
        if float(self.step_size) > 0:
            bits = (self.optical_thickness > self._cutoff()) & self.visible  # [n_cells]
        else:  # no estimate yet: every visible cell may hold something
            bits = self.visible
        weights = 2 ** torch.arange(8, device=bits.device)
        self.bitfield.copy_((bits.view(-1, 8).long() * weights).sum(-1).to(torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        self._geometry = self._geometry_of(self.aabb)  # one read of the box per load

    @torch.no_grad()
    def mark_unseen_empty(self, camera_to_world: torch.Tensor, focal: tuple[float, float],
                          principal: tuple[float, float], size: tuple[int, int],
                          near: float = 0.0, intrinsics: torch.Tensor | None = None) -> int:
        """Marks cells that no camera sees as empty for good; returns how many.

        A cell is seen when any of its 8 corners projects into any camera's image in front of it
        (instant-ngp's mark_untrained_density_grid), so cells that a frustum's border cuts stay.

        camera_to_world: [n_cams, 4, 4] (OpenGL/NeRF convention: camera looks down -z),
        focal (fx, fy), principal point (cx, cy) and image size (width, height) in pixels.
        intrinsics: optional [n_cams, 4] or [n_cams, 11] (nerfx.cameras: per camera, with its
        lens), used instead of focal and principal when given.
        """
        r, device = self.resolution, self.optical_thickness.device
        corners = self._lattice_points(device)  # [cascades, r + 1, r + 1, r + 1, 3]
        points = corners.reshape(-1, 3)
        corner_seen = torch.zeros(points.shape[0], dtype=torch.bool, device=device)
        world_to_camera = torch.linalg.inv(camera_to_world.float().to(device))
        if intrinsics is None:
            pinhole = [*focal[:2], *principal[:2]]  # (fx, fy, cx, cy)
            intrinsics = torch.tensor(pinhole).expand(len(world_to_camera), 4)
        intrinsics = intrinsics.float().to(device)
        for w2c, camera in zip(world_to_camera, intrinsics, strict=True):
            # Only the corners no camera has seen yet: after the first few views, a small part.
            todo = (~corner_seen).nonzero().squeeze(1)  # [n_todo]
            pixel, depth = project(points[todo], w2c, camera)  # [n_todo, 2], [n_todo]
            x, y = pixel.unbind(-1)
            inside = (depth > near) & (x >= 0) & (x < size[0]) & (y >= 0) & (y < size[1])
            corner_seen[todo[inside]] = True
        # A cell is seen when any of its corners is: OR over the 2x2x2 lattice points around it.
        lattice = corner_seen.view(self.cascades, 1, r + 1, r + 1, r + 1).float()
        seen = torch.nn.functional.max_pool3d(lattice, kernel_size=2, stride=1)  # [c, 1, r, r, r]
        seen = seen.reshape(-1) > 0
        self.visible &= seen
        self.optical_thickness.mul_(self.visible)
        self._pack()
        return int((~seen).sum())

    def _lattice_points(self, device: torch.device) -> torch.Tensor:
        """World positions of every cascade's cell corners. -> [cascades, r + 1, r + 1, r + 1, 3]
        (x-major, as the cells)"""
        r, g = self.resolution, self.geometry
        u = torch.arange(r + 1, device=device, dtype=torch.float32) / r * 2 - 1  # [-1, 1]
        grid = torch.stack(torch.meshgrid(u, u, u, indexing="ij"), -1)  # [r+1, r+1, r+1, 3]
        scale = 2.0 ** torch.arange(self.cascades, device=device, dtype=torch.float32)
        center = torch.tensor(g.center, device=device)
        half = torch.tensor(g.half_size, device=device)
        return center + grid[None] * scale[:, None, None, None, None] * half

    def occupied_fraction(self) -> float:
        return float(((self.optical_thickness > self._cutoff()) & self.visible).float().mean())
