"""The NeRF kernels against their torch reference at the sizes a GPU trains with, on one device.

On CUDA (benches/gpu_check.sh) the sizes are the paper's: the hash grid at 2^20 points with
L=16, F=2, T=2^19; the march at 2^18 rays through a 128^3 grid, one and three cascades, constant
and cone steps; compositing at 2^18 rays of 0 to 128 samples (64 on average), with float32 and
float16 densities and colours. On the CPU the same
checks run at small sizes, so the test code itself runs in CI. Also here: the CUDA kernels on a
side stream (they must launch on the current stream), and non-contiguous inputs.
"""

from __future__ import annotations

import math

import pytest
import torch

from nerfx import ref
from nerfx.ops import HashGridEncoding, composite_rays, hash_encode, march_rays
from nerfx.render import OccupancyGrid
from tests.helpers import BACKEND_DEVICES, assert_lowprec_close, requires_cuda

HASH_POINTS = {"cpu": 2**12, "cuda": 2**20}
HASH_POINTS_INTERPRETED = 2**8  # the Triton interpreter runs each program in Python
MARCH_RAYS = {"cpu": 2**10, "cuda": 2**18}
COMPOSITE_RAYS = {"cpu": 2**10, "cuda": 2**18}
STEP = math.sqrt(3) / 1024  # Instant-NGP's minimal step for the unit cube (world units)

HASH_BACKENDS = [p for p in BACKEND_DEVICES if p.id in ("cpu", "cuda", "triton-interp",
                                                        "triton-cuda")]
KERNELS = [p for p in BACKEND_DEVICES if p.id in ("cpu", "cuda")]
COMPOSITE_KERNELS = [p for p in BACKEND_DEVICES if p.id in ("cpu", "cuda", "triton-cuda")]


def seeded(device: str, seed: int) -> torch.Generator:
    return torch.Generator(device).manual_seed(seed)


# --- hash grid ---------------------------------------------------------------------------------

def hash_results(backend: str, x: torch.Tensor, params: torch.Tensor, config: dict,
                 grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features [N, 32], grad_x [N, 3], grad_params [n_params]) of one backend."""
    x = x.detach().requires_grad_()
    params = params.detach().requires_grad_()
    if backend == "torch":
        out = ref.hash_encode(x, params, **config)
    else:
        out = hash_encode(x, params, backend=backend, **config)
    return (out, *torch.autograd.grad(out, (x, params), grad_out.to(out.dtype)))


@pytest.mark.parametrize("backend,device", HASH_BACKENDS)
@pytest.mark.parametrize("params_dtype", [torch.float32, torch.float16])
def test_hash_grid_at_training_size(backend, device, params_dtype):
    """Instant-NGP's grid (L=16, F=2, T=2^19, 16 to 2048 cells), input gradients on: the error
    against float64 within twice the torch reference's at the same dtypes."""
    n = HASH_POINTS_INTERPRETED if (backend, device) == ("triton", "cpu") else HASH_POINTS[device]
    config = HashGridEncoding().config
    gen = seeded(device, 0)
    x = torch.rand(n, 3, generator=gen, device=device)
    params = (torch.randn(HashGridEncoding().layout.n_params, generator=gen, device=device)
              * 0.1).to(params_dtype)
    grad_out = torch.randn(n, 32, generator=gen, device=device)
    got = hash_results(backend, x, params, config, grad_out)
    lowprec = hash_results("torch", x, params, config, grad_out)
    exact = hash_results("torch", x.double(), params.double(), config, grad_out.double())
    assert got[0].shape == (n, 32) and got[2].dtype == params_dtype
    for name, a, b, c in zip(("features", "grad_x", "grad_params"), got, lowprec, exact,
                             strict=True):
        # Sums of up to 8 * 2^20 / 16^3 terms (grad_params of the coarsest level): a floor of
        # 1e-6 of the largest value covers fp32 rounding where torch's error happens to be 0.
        floor = 1e-6 if params_dtype == torch.float32 else 1e-3
        try:
            assert_lowprec_close(a, b, c, atol=floor * c.abs().max().item())
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


# --- ray marching ------------------------------------------------------------------------------

def sphere_grid(cascades: int, device: str) -> OccupancyGrid:
    """A 128^3 grid per cascade over the unit cube, occupied inside the sphere of radius 0.35
    about its centre (the benchmark's scene), every cascade's cells by their centres."""
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=128, cascades=cascades).to(device)
    cells = torch.arange(grid.optical_thickness.numel(), device=device)
    inside = (grid.cell_points(cells, jitter=False) - 0.5).norm(dim=-1) < 0.35  # [n_cells]
    weights = 2 ** torch.arange(8, device=device)
    grid.bitfield.copy_((inside.view(-1, 8).long() * weights).sum(-1).to(torch.uint8))
    return grid


def rays_through_sphere(n: int, device: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Origins 1.5 from the cube's centre (inside cascades >= 2), aimed near the centre."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    origins = 0.5 - 1.5 * direction
    target = 0.5 + 0.3 * (torch.rand(n, 3, generator=gen) - 0.5)
    directions = torch.nn.functional.normalize(target - origins, dim=-1)
    return origins.to(device), directions.to(device)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("cascades,cone_angle", [(1, 0.0), (3, 0.0), (3, 1 / 256)])
def test_march_at_training_size(backend, device, cascades, cone_angle):
    """The kernel's samples equal the reference march's bit for bit, jittered rays included."""
    grid = sphere_grid(cascades, device)
    o, d = rays_through_sphere(MARCH_RAYS[device], device)
    kwargs = dict(step_size=STEP, cone_angle=cone_angle, perturb=True, max_samples=1024)
    got = march_rays(o, d, grid, backend=backend, generator=seeded(device, 1), **kwargs)
    want = march_rays(o, d, grid, backend="torch", generator=seeded(device, 1), **kwargs)
    assert torch.equal(got.offsets, want.offsets)
    for name in ("t_start", "t_end", "positions", "directions", "ray_indices", "resume"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    per_ray = want.t_start.numel() / o.shape[0]
    assert per_ray > (100 if cone_angle == 0 else 20), f"{per_ray:.0f} samples a ray: too few"


# --- compositing -------------------------------------------------------------------------------

def random_packed(n_rays: int, device: str, dtype: torch.dtype, seed: int = 0):
    """Rays of 0 to 128 samples (64 on average) on [2, 6]: (sigmas, rgbs, t_start, t_end,
    offsets), generated on the device."""
    gen = seeded(device, seed)
    counts = torch.randint(0, 129, (n_rays,), generator=gen, device=device)
    offsets = torch.zeros(n_rays + 1, dtype=torch.int64, device=device)
    offsets[1:] = counts.cumsum(0)
    n = int(offsets[-1])
    ray = torch.repeat_interleave(torch.arange(n_rays, device=device), counts)
    rank = torch.arange(n, device=device) - offsets[ray]  # index of each sample in its ray
    t_start = 2.0 + rank * (4.0 / 128)
    t_end = t_start + (4.0 / 128) * torch.rand(n, generator=gen, device=device, dtype=dtype)
    sigmas = torch.rand(n, generator=gen, device=device, dtype=dtype) * 20
    rgbs = torch.rand(n, 3, generator=gen, device=device, dtype=dtype)
    return sigmas, rgbs, t_start.to(dtype), t_end.to(dtype), offsets


def composite_results(backend: str, inputs, grads) -> tuple[torch.Tensor, ...]:
    """(color, opacity, depth, weights, grad_sigmas, grad_rgbs) of one backend."""
    sigmas, rgbs, t_start, t_end, offsets = inputs
    sigmas, rgbs = sigmas.detach().requires_grad_(), rgbs.detach().requires_grad_()
    out = composite_rays(sigmas, rgbs, t_start, t_end, offsets, backend=backend)
    loss = sum((g.to(o.dtype) * o).sum() for g, o in zip(grads, out, strict=True))
    return (*out, *torch.autograd.grad(loss, (sigmas, rgbs)))


F32, F64, HALF = torch.float32, torch.float64, torch.float16


@pytest.mark.parametrize("backend,device", COMPOSITE_KERNELS)
@pytest.mark.parametrize("dtype,sigmas_dtype,rgbs_dtype",
                         [(F32, F32, F32), (F64, F64, F64), (F32, F32, HALF), (F32, HALF, HALF)],
                         ids=["fp32", "fp64", "fp16-rgbs", "fp16-sigmas-rgbs"])
def test_composite_at_training_size(backend, device, dtype, sigmas_dtype, rgbs_dtype):
    """Outputs and gradients within twice the torch reference's error against float64 (float32
    positions, the densities and colours float32 or float16), or within float64 rounding of the
    reference (float64)."""
    n_rays = COMPOSITE_RAYS[device]
    sigmas, rgbs, *rest = random_packed(n_rays, device, dtype)
    inputs = (sigmas.to(sigmas_dtype), rgbs.to(rgbs_dtype), *rest)
    gen = seeded(device, 5)
    n = inputs[0].shape[0]
    grads = [torch.randn(shape, generator=gen, device=device, dtype=torch.float64)
             for shape in ((n_rays, 3), (n_rays,), (n_rays,), (n,))]
    got = composite_results(backend, inputs, grads)
    lowprec = composite_results("torch", inputs, grads)
    exact = composite_results("torch", [t.double() if t.is_floating_point() else t
                                        for t in inputs], grads)
    names = ("color", "opacity", "depth", "weights", "grad_sigmas", "grad_rgbs")
    for name, a, b, c in zip(names, got, lowprec, exact, strict=True):
        assert a.dtype == {"grad_sigmas": sigmas_dtype, "grad_rgbs": rgbs_dtype}.get(name, dtype)
        scale = c.abs().max().item()
        if dtype == torch.float64:
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12 * scale,
                                       msg=lambda m, name=name: f"{name}: {m}")
            continue
        try:
            assert_lowprec_close(a, b, c, atol=1e-6 * scale)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("backend,device", KERNELS)
def test_composite_and_march_take_non_contiguous_inputs(backend, device):
    inputs = random_packed(37, device, torch.float32, seed=2)
    sigmas, rgbs, t_start, t_end, offsets = inputs
    strided = (torch.stack([sigmas, sigmas], 1)[:, 0], rgbs.t().contiguous().t(),
               torch.stack([t_start, t_start], 1)[:, 0], t_end, offsets)
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    grads = [torch.ones(shape, device=device, dtype=torch.float64)
             for shape in ((37, 3), (37,), (37,), (sigmas.shape[0],))]
    for a, b in zip(composite_results(backend, strided, grads),
                    composite_results(backend, inputs, grads), strict=True):
        assert torch.equal(a, b)

    grid = sphere_grid(1, device)
    o, d = rays_through_sphere(50, device)
    o_t, d_t = o.t().contiguous().t(), torch.cat([d, d], 1)[:, :3]
    assert not o_t.is_contiguous() and not d_t.is_contiguous()
    want = march_rays(o, d, grid, step_size=STEP, backend=backend)
    got = march_rays(o_t, d_t, grid, step_size=STEP, backend=backend)
    assert want.t_start.numel() > 0
    for name in ("offsets", "t_start", "positions"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name


# --- a second CUDA stream ----------------------------------------------------------------------

@requires_cuda
@pytest.mark.cuda
def test_cuda_kernels_run_on_the_current_stream():
    """Each op's inputs are written on a side stream after a 50 ms device sleep there: a kernel
    launched on another stream would read them before they exist."""
    device = "cuda"
    grid = sphere_grid(1, device)
    enc = HashGridEncoding().to(device)
    o, d = rays_through_sphere(2**14, device)
    x = torch.rand(2**16, 3, generator=seeded(device, 0), device=device)
    inputs = random_packed(2**12, device, torch.float32)
    grads = [torch.ones(shape, device=device, dtype=torch.float64)
             for shape in ((2**12, 3), (2**12,), (2**12,), (inputs[0].shape[0],))]

    def run_all(x, o, d, inputs):
        features = hash_encode(x, enc.params, backend="cuda", **enc.config)
        samples = march_rays(o, d, grid, step_size=STEP, backend="cuda")
        composited = composite_results("cuda", inputs, grads)
        return features, samples.offsets, samples.t_start, *composited

    want = run_all(x, o, d, inputs)
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(100_000_000)  # ~50 ms of device time on this stream
        copies = [t.clone() for t in (x, o, d, *inputs)]
        got = run_all(copies[0], copies[1], copies[2], copies[3:])
    side.synchronize()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
