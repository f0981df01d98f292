"""Ray marching through a 128^3 grid with a sphere occupied (radius 0.35 of the unit cube),
step sqrt(3)/1024: every backend, and nerfacc's occupancy-grid sampler when importable.
2^18 rays on a GPU; the CPU size is scaled down (the torch reference marches every candidate).
"""

from __future__ import annotations

import math

import pytest
import torch

from benches.helpers import devices, run_benchmark
from nerfx.ops import BackendError, march_rays
from nerfx.ops.raymarch import BACKENDS
from nerfx.render import OccupancyGrid

RAYS = {"cpu": 2**12, "cuda": 2**18}
IMPLS = ["torch", "cpu", "cuda", "nerfacc"]


def sphere_grid(device: str) -> OccupancyGrid:
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=128).to(device)
    grid.update(0, lambda x: ((x - 0.5).norm(dim=-1) < 0.35).float() * 100.0,
                step_size=math.sqrt(3) / 1024, generator=torch.Generator(device).manual_seed(0))
    return grid


def rays_towards_sphere(n: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    origins = 0.5 - 1.5 * direction  # outside the cube, looking through its centre region
    target = 0.5 + 0.3 * (torch.rand(n, 3, generator=gen) - 0.5)
    return origins.to(device), torch.nn.functional.normalize(target - origins, dim=-1).to(device)


def nerfacc_marcher(grid: OccupancyGrid, device: str, step: float):
    nerfacc = pytest.importorskip("nerfacc")
    if device != "cuda":
        pytest.skip("nerfacc's grid sampler runs on CUDA only")
    estimator = nerfacc.OccGridEstimator(roi_aabb=grid.aabb, resolution=grid.resolution,
                                         levels=1).to(device)
    occupied = grid.occupied_at(grid.cell_points(torch.arange(grid.optical_thickness.numel(),
                                                              device=device), jitter=False))
    estimator.binaries.copy_(occupied.view(estimator.binaries.shape))
    return lambda o, d: estimator.sampling(o, d, render_step_size=step)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", IMPLS)
def test_march_rays(benchmark, device, impl):
    grid = sphere_grid(device)
    n = RAYS[device]
    o, d = rays_towards_sphere(n, device)
    step = math.sqrt(3) / 1024
    if impl == "nerfacc":
        fn = nerfacc_marcher(grid, device, step)
    else:
        try:
            BACKENDS.select(impl, torch.device(device), (torch.float32,))
        except BackendError as exc:
            pytest.skip(str(exc))
        fn = lambda o, d: march_rays(o, d, grid, step_size=step, backend=impl)  # noqa: E731
    samples = march_rays(o, d, grid, step_size=step, backend="auto")
    per_ray = samples.t_start.numel() / n
    benchmark.extra_info["samples_per_ray"] = round(per_ray, 1)
    run_benchmark(benchmark, lambda: fn(o, d), device, group=f"march_rays {device} {n} rays "
                  f"({per_ray:.0f} samples/ray)", items=samples.t_start.numel(), unit="samples")
