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
from nerfx.ops import _checks as checks
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


def _fake(rays_o, rays_d, near, far, jitter, bitfield, center, half_size, resolution, cascades,
          step_size, cone_angle, max_samples):
    n_samples = torch.library.get_ctx().new_dynamic_size()
    n = rays_o.shape[0]
    return (rays_o.new_empty(n + 1, dtype=torch.int64), rays_o.new_empty(n_samples),
            rays_o.new_empty(n_samples), rays_o.new_empty(n_samples, 3), rays_o.new_empty(n))


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


# The checks of the public function, before the backend is chosen and for every backend (the
# torch backend never reaches C++); the compiled op makes its own (csrc/raymarch/raymarch.cpp),
# in the same words where they overlap (nerfx.ops._checks).
OP = "march_rays"


def _per_ray(value: float | torch.Tensor, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.shape not in ((n,), ()):
            raise ValueError(f"{OP}: {name} must be a float or [N] = [{n}], got "
                             f"{list(value.shape)}")
        return value.to(like).expand(n).contiguous()
    return torch.full((n,), float(value), dtype=like.dtype, device=like.device)


def _check(rays_o, rays_d, bitfield, geometry) -> None:
    checks.check_tensor(OP, "rays_o", rays_o)
    checks.check_tensor(OP, "rays_d", rays_d)
    checks.check_shape(OP, "rays_o", rays_o, "[N, 3]", (checks.ANY, 3))
    checks.check_shape(OP, "rays_d", rays_d, "[N, 3]", (rays_o.shape[0], 3))
    checks.check_floating(OP, "rays_o", rays_o)
    checks.check_floating(OP, "rays_d", rays_d)
    checks.check_device(OP, "rays_d", rays_d, "rays_o", rays_o)
    if not isinstance(geometry, GridGeometry):
        raise TypeError(f"{OP}: geometry must be a GridGeometry, got {type(geometry).__name__}")
    if geometry.cascades > 1 and geometry.resolution % 4:  # the kernels' empty-cell skip
        raise ValueError(f"{OP}: with {geometry.cascades} cascades the resolution must be a "
                         f"multiple of 4, got {geometry.resolution}")
    checks.check_tensor(OP, "bitfield", bitfield)
    checks.check_dtype(OP, "bitfield", bitfield, (torch.uint8,))
    n_bits = geometry.cascades * geometry.resolution**3
    checks.check_shape(OP, "bitfield", bitfield, "[cascades * resolution^3 / 8]", (n_bits // 8,))
    checks.check_device(OP, "bitfield", bitfield, "rays_o", rays_o)


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
    if geometry is None:
        bitfield, geometry = bitfield.bitfield, bitfield.geometry
    _check(rays_o, rays_d, bitfield, geometry)
    step = float(step_size) if step_size is not None else default_step_size(geometry)
    if not step > 0:
        raise ValueError(f"{OP}: step_size must be > 0, got {step}")
    if not max_samples > 0:
        raise ValueError(f"{OP}: max_samples must be > 0, got {max_samples}")
    n = rays_o.shape[0]
    o = rays_o.float().contiguous()
    d = rays_d.float().contiguous()
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
