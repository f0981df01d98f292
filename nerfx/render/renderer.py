"""Volume rendering of a radiance field through the occupancy grid: march, query, composite."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nerfx.ops.composite import as_composite_input, composite_rays
from nerfx.ops.raymarch import march_rays
from nerfx.render.occupancy import OccupancyGrid
from nerfx.specs import Composited, RaySamples

# field(positions [S, 3], directions [S, 3]) -> (sigmas [S], rgbs [S, 3])
Field = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
# density_fn(positions [S, 3]) -> sigmas [S]
DensityFn = Callable[[torch.Tensor], torch.Tensor]

# A ray stops where its transmittance falls below this (instant-ngp NERF_MIN_TRANSMITTANCE 1e-4;
# the compositing op zeroes the weights behind it).
MIN_TRANSMITTANCE = 1e-4


def render_rays(field: Field, grid: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor,
                *, near: float = 0.0, far: float = 1e10, step_size: float | None = None,
                cone_angle: float = 0.0, max_samples: int = 1024,
                background: torch.Tensor | None = None, perturb: bool = False,
                generator: torch.Generator | None = None,
                density_fn: DensityFn | None = None,
                transmittance_threshold: float = MIN_TRANSMITTANCE,
                backend: str = "auto") -> tuple[Composited, int]:
    """Differentiable render of rays [n, 3] -> (Composited, number of samples the field trained).

    With density_fn, samples behind the point where a ray's transmittance falls below the
    threshold are dropped before the field runs with gradients (instant-ngp's compaction; nerfacc
    does the same with its sigma_fn): a forward-only density pass over every marched sample finds
    where each ray terminates. Without it, every marched sample is trained.
    """
    return render_rays_counted(field, grid, rays_o, rays_d, near=near, far=far,
                               step_size=step_size, cone_angle=cone_angle,
                               max_samples=max_samples, background=background, perturb=perturb,
                               generator=generator, density_fn=density_fn,
                               transmittance_threshold=transmittance_threshold,
                               backend=backend)[:2]


def render_rays_counted(field: Field, grid: OccupancyGrid, rays_o: torch.Tensor,
                        rays_d: torch.Tensor, *, near: float = 0.0, far: float = 1e10,
                        step_size: float | None = None, cone_angle: float = 0.0,
                        max_samples: int = 1024, background: torch.Tensor | None = None,
                        perturb: bool = False, generator: torch.Generator | None = None,
                        density_fn: DensityFn | None = None,
                        transmittance_threshold: float = MIN_TRANSMITTANCE,
                        backend: str = "auto") -> tuple[Composited, int, int]:
    """render_rays, also returning how many samples the march produced before compaction."""
    with torch.no_grad():
        samples = march_rays(rays_o, rays_d, grid.bitfield, grid.geometry, near=near, far=far,
                             step_size=step_size, cone_angle=cone_angle,
                             max_samples=max_samples, perturb=perturb, generator=generator,
                             backend=backend)
        n_marched = int(samples.t_start.numel())
        if density_fn is not None and n_marched:
            samples = terminate(samples, density_fn(samples.positions), transmittance_threshold)
    sigmas, rgbs = field(samples.positions, samples.directions)
    out = composite_rays(as_composite_input(sigmas), as_composite_input(rgbs), samples.t_start,
                         samples.t_end,
                         samples.offsets, background=background,
                         transmittance_threshold=transmittance_threshold, backend=backend)
    return out, int(samples.t_start.numel()), n_marched


def terminate(samples: RaySamples, sigmas: torch.Tensor, threshold: float) -> RaySamples:
    """Keeps the samples whose incoming transmittance T_i = exp(-sum_{j<i} sigma_j dt_j) is at
    least the threshold, the ones compositing weights (sigmas [S], 1 / world unit)."""
    thickness = sigmas.double() * (samples.t_end - samples.t_start).double()  # [S]
    # Exclusive prefix sums within each ray, from one running sum in float64 (exact enough
    # across a whole batch: 1e-16 relative).
    running = torch.cumsum(thickness, 0)
    before_ray = torch.cat([running.new_zeros(1), running])[samples.offsets[:-1]]  # [n_rays]
    ahead = running - thickness - before_ray.index_select(0, samples.ray_indices)  # [S]
    keep = ahead <= -math.log(threshold)
    counts = torch.zeros(samples.offsets.numel() - 1, dtype=torch.int64,
                         device=keep.device).index_add_(0, samples.ray_indices, keep.long())
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    kept = torch.nonzero(keep).flatten()
    return RaySamples(samples.positions[kept], samples.directions[kept], samples.t_start[kept],
                      samples.t_end[kept], offsets, samples.ray_indices[kept], samples.resume)
