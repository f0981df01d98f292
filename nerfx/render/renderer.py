"""Volume rendering of a radiance field through the occupancy grid: march, query, composite."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nerfx.cameras import camera_rays  # noqa: F401  (re-exported: the old home of pixel rays)
from nerfx.ops.composite import composite_rays
from nerfx.ops.raymarch import march_rays
from nerfx.render.occupancy import OccupancyGrid
from nerfx.specs import Composited

# field(positions [S, 3], directions [S, 3]) -> (sigmas [S], rgbs [S, 3])
Field = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def render_rays(field: Field, grid: OccupancyGrid, rays_o: torch.Tensor, rays_d: torch.Tensor,
                *, near: float = 0.0, far: float = 1e10, step_size: float | None = None,
                max_samples: int = 1024, background: torch.Tensor | None = None,
                perturb: bool = False, generator: torch.Generator | None = None,
                backend: str = "auto") -> tuple[Composited, int]:
    """Differentiable render of rays [n, 3] -> (Composited, number of samples taken)."""
    with torch.no_grad():
        samples = march_rays(rays_o, rays_d, grid.bitfield, grid.geometry, near=near, far=far,
                             step_size=step_size, max_samples=max_samples, perturb=perturb,
                             generator=generator, backend=backend)
    sigmas, rgbs = field(samples.positions, samples.directions)
    out = composite_rays(sigmas.float(), rgbs.float(), samples.t_start, samples.t_end,
                         samples.offsets, background=background, backend=backend)
    return out, int(samples.t_start.numel())

