"""Inference rendering as Instant-NGP does it: march the alive rays a few samples at a time,
composite each round into the running colour, and drop the rays that terminated (transmittance
below the threshold, or out of the grid), so late rounds work on few rays.
"""

from __future__ import annotations

import torch

from nerfx.ops.composite import as_composite_input, composite_rays
from nerfx.ops.raymarch import march_rays
from nerfx.render.occupancy import OccupancyGrid
from nerfx.render.renderer import Field
from nerfx.specs import Composited, with_background


@torch.no_grad()
def render_rays_compacting(rays_o: torch.Tensor, rays_d: torch.Tensor, grid: OccupancyGrid,
                           field: Field, *, near: float = 0.0, far: float = 1e10,
                           step_size: float | None = None, cone_angle: float = 0.0,
                           samples_per_round: int = 8,
                           transmittance_threshold: float = 1e-4,
                           background: torch.Tensor | None = None,
                           backend: str = "auto") -> Composited:
    """Renders rays [n_rays, 3]; returns Composited with empty weights (they are not kept)."""
    n = rays_o.shape[0]
    color = rays_o.new_zeros(n, 3)
    opacity = rays_o.new_zeros(n)
    depth = rays_o.new_zeros(n)
    transmittance = rays_o.new_ones(n)
    resume = torch.full((n,), float(near), device=rays_o.device)
    alive = torch.arange(n, device=rays_o.device)
    bitfield, geometry = grid.bitfield, grid.geometry
    while alive.numel():
        samples = march_rays(rays_o[alive], rays_d[alive], bitfield, geometry,
                             near=resume[alive], far=far, step_size=step_size,
                             cone_angle=cone_angle, max_samples=samples_per_round,
                             backend=backend)
        sigmas, rgbs = field(samples.positions, samples.directions)
        # Within a round the ray starts fresh; its earlier rounds scale what this one adds.
        part = composite_rays(as_composite_input(sigmas), as_composite_input(rgbs),
                              samples.t_start, samples.t_end,
                              samples.offsets, transmittance_threshold=0.0, backend=backend)
        t_alive = transmittance[alive]
        color[alive] += t_alive[:, None] * part.color
        opacity[alive] += t_alive * part.opacity
        depth[alive] += t_alive * part.depth
        transmittance[alive] = t_alive * (1 - part.opacity)
        resume[alive] = samples.resume
        keep = torch.isfinite(samples.resume) & (transmittance[alive] >= transmittance_threshold)
        alive = alive[keep]
    out = Composited(color, opacity, depth, rays_o.new_zeros(0))
    return with_background(out, background)
