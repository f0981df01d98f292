"""Occupancy-grid ray marching: packed samples in occupied cells only.

    samples = march_rays(rays_o, rays_d, bitfield, geometry, near=0.0, far=1e10)
    samples = march_rays(rays_o, rays_d, grid)     # an OccupancyGrid: its bitfield and geometry
    samples.positions [S, 3], samples.t_start / t_end [S], samples.offsets [n_rays + 1]

Backends: `cuda` and `cpu` (nerfx._C: DDA over the bitfield, two passes: count, scan, fill) and
`torch` (nerfx.ref.raymarch: march_rays_dense visits every lattice candidate of constant steps;
march_rays_cone follows the kernels' cone-step rule with all rays at once).
"""

from __future__ import annotations

from typing import Protocol

import torch

from nerfx import _ext
from nerfx.ops._dispatch import Backend, OpBackends, extension_kernel, register
from nerfx.ops._library import register_op
from nerfx.ref.raymarch import march_rays_cone, march_rays_dense
from nerfx.specs import GridGeometry, RaySamples, paper_step_size

__all__ = ["HasOccupancy", "RaySamples", "default_step_size", "march_rays"]


class HasOccupancy(Protocol):
    """What march_rays reads of a grid (nerfx.render.OccupancyGrid is one)."""

    bitfield: torch.Tensor  # [cascades * resolution^3 / 8] uint8

    @property
    def geometry(self) -> GridGeometry: ...


def _fake(origins, directions, near, far, jitter, bitfield, center, half_size, resolution,
          cascades, step_size, cone_angle, max_samples):
    n_samples = torch.library.get_ctx().new_dynamic_size()
    n = origins.shape[0]
    return (origins.new_empty(n + 1, dtype=torch.int64), origins.new_empty(n_samples),
            origins.new_empty(n_samples), origins.new_empty(n_samples, 3), origins.new_empty(n))


def _register_library() -> None:
    register_op("march_rays", fake=_fake)  # not differentiable: a fake kernel only


_ext.on_load(_register_library)


def _run_compiled(o, d, near, far, jitter, bitfield, g: GridGeometry, step, cone, max_samples):
    return torch.ops.nerfx.march_rays(o, d, near, far, jitter, bitfield, list(g.center),
                                      list(g.half_size), g.resolution, g.cascades, step, cone,
                                      max_samples)


def _run_reference(o, d, near, far, jitter, bitfield, g: GridGeometry, step, cone, max_samples):
    if cone > 0:
        return march_rays_cone(o, d, near, far, jitter, bitfield, g, step, cone, max_samples)
    return march_rays_dense(o, d, near, far, jitter, bitfield, g, step, max_samples)


F32 = (torch.float32,)
BACKENDS = register(OpBackends("march_rays", [
    Backend("cuda", ("cuda",), F32, _run_compiled, extension_kernel("march_rays")),
    Backend("cpu", ("cpu",), F32, _run_compiled, extension_kernel("march_rays")),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), F32, _run_reference),
]))


def default_step_size(geometry: GridGeometry) -> float:
    """Instant-NGP's step for the cascade-0 box of the grid."""
    return paper_step_size(2 * max(geometry.half_size))


def _per_ray(value: float | torch.Tensor, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.shape not in ((n,), ()):
            raise ValueError(f"march_rays: {name} must be a float or [n_rays], got "
                             f"{tuple(value.shape)}")
        return value.to(like).expand(n).contiguous()
    return torch.full((n,), float(value), dtype=like.dtype, device=like.device)


def march_rays(rays_o: torch.Tensor, rays_d: torch.Tensor,
               bitfield: torch.Tensor | HasOccupancy, geometry: GridGeometry | None = None, *,
               near: float | torch.Tensor = 0.0, far: float | torch.Tensor = 1e10,
               step_size: float | None = None, max_samples: int = 1024,
               cone_angle: float = 0.0, perturb: bool = False,
               generator: torch.Generator | None = None, backend: str = "auto") -> RaySamples:
    """Marches rays [n_rays, 3] through the grid's occupied cells.

    bitfield: [cascades * resolution^3 / 8] uint8, one bit per cell (cascade-major, x-major);
    geometry: the grid's box, resolution and cascades as host numbers (no device read per call).
    A grid object (with .bitfield and .geometry, e.g. nerfx.render.OccupancyGrid) may stand in
    for both.

    Samples lie on a lattice of constant step (cone_angle = 0; default step sqrt(3)/1024 of the
    box) or grow as t * cone_angle; only candidates whose midpoint is in an occupied cell inside
    the grid are kept, at most max_samples per ray. perturb jitters each ray's lattice by a
    random fraction of a step. near/far may be per ray ([n_rays]); a capped ray continues with
    near=samples.resume (and perturb off).
    """
    for name, t in (("rays_o", rays_o), ("rays_d", rays_d)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[-1] != 3:
            raise ValueError(f"march_rays: {name} must be [n_rays, 3], got "
                             f"{getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise TypeError(f"march_rays: {name} must be floating point, got {t.dtype}")
    if rays_o.shape != rays_d.shape or rays_o.device != rays_d.device:
        raise ValueError("march_rays: rays_o and rays_d must match in shape and device")
    if geometry is None:
        bitfield, geometry = bitfield.bitfield, bitfield.geometry
    if not isinstance(geometry, GridGeometry):
        raise TypeError(f"march_rays: geometry must be a GridGeometry, got "
                        f"{type(geometry).__name__}")
    if geometry.cascades > 1 and geometry.resolution % 4:  # the kernels' empty-cell skip
        raise ValueError(f"march_rays: with {geometry.cascades} cascades the resolution must be "
                         f"a multiple of 4, got {geometry.resolution}")
    n_bits = geometry.cascades * geometry.resolution**3
    if bitfield.dtype != torch.uint8 or bitfield.shape != (n_bits // 8,):
        raise ValueError(f"march_rays: bitfield must be uint8 [{n_bits // 8}] for this geometry, "
                         f"got {bitfield.dtype} {tuple(bitfield.shape)}")
    if bitfield.device != rays_o.device:
        raise ValueError(f"march_rays: the grid is on {bitfield.device}, the rays on "
                         f"{rays_o.device}")
    n = rays_o.shape[0]
    o = rays_o.float().contiguous()
    d = rays_d.float().contiguous()
    step = float(step_size) if step_size is not None else default_step_size(geometry)
    jitter = (torch.rand(n, generator=generator, device=o.device) if perturb
              else torch.zeros(n, device=o.device))
    chosen = BACKENDS.select(backend, o.device, (torch.float32,))
    offsets, t_start, t_end, positions, resume = chosen.run(
        o, d, _per_ray(near, n, o, "near"), _per_ray(far, n, o, "far"), jitter,
        bitfield.contiguous(), geometry, step, float(cone_angle), int(max_samples))
    counts = offsets[1:] - offsets[:-1]
    rays = torch.repeat_interleave(torch.arange(n, device=o.device), counts,
                                   output_size=t_start.shape[0])
    return RaySamples(positions, d.index_select(0, rays), t_start, t_end, offsets, rays, resume)
