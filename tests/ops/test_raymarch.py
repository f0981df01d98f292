"""Occupancy grid and ray marching: the kernels against a dense march that skips nothing."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.ops import composite_rays, march_rays
from nerfx.render import OccupancyGrid
from nerfx.render.inference import render_rays_compacting
from nerfx.specs import GridGeometry
from tests.helpers import BACKEND_DEVICES

KERNELS = [p for p in BACKEND_DEVICES if p.id in ("cpu", "cuda")]
MARCHERS = [p for p in BACKEND_DEVICES if p.id in ("torch-cpu", "cpu", "cuda", "torch-cuda")]


def random_grid(cascades=1, resolution=16, fill=0.3, seed=0, device="cpu") -> OccupancyGrid:
    grid = OccupancyGrid([-1.0, -0.5, 0.0, 1.0, 0.5, 2.0], resolution=resolution,
                         cascades=cascades)
    gen = torch.Generator().manual_seed(seed)
    bits = torch.rand(grid.optical_thickness.shape, generator=gen) < fill
    grid.bitfield.copy_((bits.view(-1, 8).long() * 2 ** torch.arange(8)).sum(-1).to(torch.uint8))
    return grid.to(device)


def awkward_rays(n: int, seed=0, device="cpu"):
    """Random rays plus awkward ones: zero direction, axis-parallel, inside, missing."""
    gen = torch.Generator().manual_seed(seed)
    o = torch.rand(n, 3, generator=gen) * 6 - 3 + torch.tensor([0.0, 0.0, 1.0])
    target = torch.rand(n, 3, generator=gen) * torch.tensor([2.0, 1.0, 2.0]) \
        - torch.tensor([1.0, 0.5, 0.0])
    d = target - o
    special = [
        ([0.0, 0.0, 1.0], [0.0, 0.0, 0.0]),      # zero-length direction
        ([-3.0, 0.1, 1.0], [1.0, 0.0, 0.0]),     # parallel to x
        ([0.2, 0.1, -1.0], [0.0, 0.0, 2.0]),     # parallel to z, unnormalised
        ([0.1, 0.2, 1.1], [0.3, -0.4, 0.5]),     # starts inside
        ([5.0, 5.0, 5.0], [1.0, 1.0, 1.0]),      # misses
        ([-1.0, 0.0, 1.0], [1.0, 0.0, 0.0]),     # starts on the boundary
    ]
    for i, (origin, direction) in enumerate(special[:n]):
        o[i], d[i] = torch.tensor(origin), torch.tensor(direction)
    return o.to(device), d.to(device)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("cascades", [1, 2])
@pytest.mark.parametrize("n_rays", [0, 1, 7, 1023])
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 64])
@pytest.mark.parametrize("fill", [0.3, 0.02])  # 0.02: a quarter of the 4^3 blocks empty
def test_kernel_equals_reference_march(backend, device, cascades, n_rays, cone_angle, fill):
    grid = random_grid(cascades, fill=fill, device=device, seed=n_rays)
    o, d = awkward_rays(n_rays, seed=n_rays, device=device)
    for perturb in (False, True):
        kwargs = dict(step_size=0.013, near=0.05, perturb=perturb, cone_angle=cone_angle)
        got = march_rays(o, d, grid, backend=backend,
                         generator=torch.Generator(device).manual_seed(1), **kwargs)
        want = march_rays(o, d, grid, backend="torch",
                          generator=torch.Generator(device).manual_seed(1), **kwargs)
        assert torch.equal(got.offsets, want.offsets)
        for name in ("t_start", "t_end", "positions", "directions", "ray_indices", "resume"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0,
                                       msg=name)
    if n_rays == 1023:
        assert want.offsets[-1] > (1000 if fill > 0.1 else 100), "the case must produce samples"


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("cascades", [1, 2])
def test_kernel_equals_reference_march_around_an_object(backend, device, cascades):
    """A ball of occupied cells in a 32^3 grid, as a trained scene's grid looks: most rays cross
    long runs of empty blocks (which the cpu march jumps in one go) before and after it."""
    grid = OccupancyGrid([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0], resolution=32, cascades=cascades)
    axis = (torch.arange(32) + 0.5) / 16 - 1                         # cell centres in [-1, 1]
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    ball = (x - 0.2) ** 2 + (y + 0.1) ** 2 + z ** 2 < 0.35 ** 2      # [32, 32, 32]
    bits = torch.zeros(cascades, 32, 32, 32, dtype=torch.bool)
    bits[0] = ball
    grid.bitfield.copy_((bits.view(-1, 8).long() * 2 ** torch.arange(8)).sum(-1).to(torch.uint8))
    grid = grid.to(device)
    o, d = awkward_rays(2000, seed=3, device=device)
    kwargs = dict(step_size=0.004, near=0.05, perturb=True)
    got = march_rays(o, d, grid, backend=backend, generator=torch.Generator(device).manual_seed(2),
                     **kwargs)
    want = march_rays(o, d, grid, backend="torch",
                      generator=torch.Generator(device).manual_seed(2), **kwargs)
    assert want.offsets[-1] > 5000, "the case must produce samples to compare"
    assert torch.equal(got.offsets, want.offsets)
    for name in ("t_start", "t_end", "positions", "resume"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0,
                                   msg=name)


def far_rays(n: int, distance: float, seed=0, device="cpu"):
    """Rays from `distance` away aimed at random points of the grid's cascade-0 box."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    target = torch.rand(n, 3, generator=gen) * torch.tensor([2.0, 1.0, 2.0]) \
        - torch.tensor([1.0, 0.5, 0.0])
    return (target - d * distance).to(device), d.to(device)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("cascades,distance,step", [(1, 2000.0, 0.01), (3, 300.0, 0.005)])
def test_far_rays_skip_no_sample(backend, device, cascades, distance, step):
    """|t| / step ~ 6e4 to 2e5: the float rounding of a cell's exit distance is several
    hundredths of a step there, so the skip over empty cells must be exact, not a margin."""
    grid = random_grid(cascades, fill=0.3, seed=1, device=device)
    o, d = far_rays(64, distance, device=device)
    for perturb in (False, True):
        kwargs = dict(step_size=step, perturb=perturb)
        got = march_rays(o, d, grid, backend=backend,
                         generator=torch.Generator(device).manual_seed(1), **kwargs)
        want = march_rays(o, d, grid, backend="torch",
                          generator=torch.Generator(device).manual_seed(1), **kwargs)
        assert want.t_start.min() / step > 1e4, "the case must be far"
        assert torch.equal(got.offsets, want.offsets), f"perturb={perturb}"
        for name in ("t_start", "t_end", "positions", "resume"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=0,
                                       msg=name)


@pytest.mark.parametrize("backend,device", MARCHERS)
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 64])
def test_cap_and_resume_continue_the_same_march(backend, device, cone_angle):
    grid = random_grid(device=device)
    o, d = awkward_rays(64, device=device)
    kwargs = dict(step_size=0.02, cone_angle=cone_angle, backend=backend)
    full = march_rays(o, d, grid, **kwargs)
    capped = march_rays(o, d, grid, max_samples=5, **kwargs)
    assert int((capped.offsets.diff()).max()) <= 5
    if backend != "torch":
        reference = march_rays(o, d, grid, max_samples=5, **{**kwargs, "backend": "torch"})
        assert torch.equal(capped.resume, reference.resume)
    rest = march_rays(o, d, grid, near=capped.resume.clamp(max=1e9), **kwargs)
    finished = ~torch.isfinite(capped.resume)
    for r in range(64):
        a, b = full.offsets[r].item(), full.offsets[r + 1].item()
        head = capped.t_start[capped.offsets[r]:capped.offsets[r + 1]]
        tail = rest.t_start[rest.offsets[r]:rest.offsets[r + 1]] if not finished[r] else head[:0]
        torch.testing.assert_close(torch.cat([head, tail]), full.t_start[a:b], rtol=0,
                                   atol=1e-5)


@pytest.mark.parametrize("backend,device", MARCHERS)
@pytest.mark.parametrize("cone_angle", [0.0, 1 / 256])
def test_samples_only_in_occupied_cells_inside_the_box(backend, device, cone_angle):
    grid = random_grid(cascades=2, fill=0.2, device=device)
    o, d = awkward_rays(300, device=device)
    s = march_rays(o, d, grid, step_size=0.01, cone_angle=cone_angle, backend=backend)
    assert s.t_start.numel() > 100
    assert grid.occupied_at(s.positions).all()
    lo, hi = grid.geometry.box(device)
    assert ((s.positions >= lo - 1e-5) & (s.positions <= hi + 1e-5)).all()
    dt = s.t_end - s.t_start
    assert (dt >= 0.01 * (1 - 1e-5)).all()
    same_ray = s.ray_indices[1:] == s.ray_indices[:-1]
    assert (s.t_start[1:][same_ray] >= s.t_end[:-1][same_ray] - 1e-5).all(), "no overlap"
    if cone_angle > 0:
        far = s.t_start > 0.01 / cone_angle * 1.5
        assert (dt[far] > 0.01 * 1.2).any(), "steps grow with distance"


def test_paper_step_marches_the_unit_cube():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=16)  # all cells start occupied
    o = torch.tensor([[0.5, 0.5, -1.0]])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    s = march_rays(o, d, grid, backend="cpu")
    assert s.t_start.numel() == math.floor(1 / (math.sqrt(3) / 1024))


def test_grid_update_of_a_known_density():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=16)
    radius = 0.3

    def density(x):
        return ((x - 0.5).norm(dim=-1) < radius).float() * 10.0

    step = 0.01  # sigma * dt = 0.1 inside: occupied; 0 outside
    assert grid.update(0, density, step_size=step, generator=torch.Generator().manual_seed(0))
    assert not grid.update(33, density, step_size=step)  # every 2nd step from 32 to 47
    cells = torch.arange(16**3)
    centers = grid.cell_points(cells, jitter=False)
    dist = (centers - 0.5).norm(dim=-1)
    half_diag = math.sqrt(3) / 2 / 16
    inside, outside = dist < radius - half_diag, dist > radius + half_diag
    occ = grid.occupied_at(centers)
    assert occ[inside].all() and not occ[outside].any()
    # Decay: with no density anywhere the old values fade but stay above zero.
    before = grid.optical_thickness.clone()
    grid.update(16, lambda x: torch.zeros(x.shape[0]), step_size=step)
    torch.testing.assert_close(grid.optical_thickness, before * 0.95)


def test_cells_no_camera_sees_are_emptied_and_state_round_trips():
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8)
    grid.update(0, lambda x: torch.ones(x.shape[0]), step_size=0.1)
    pose = torch.eye(4)
    pose[2, 3] = 3.0  # at z = 3 looking down -z, narrow field of view
    n = grid.mark_unseen_empty(pose[None], focal=(400.0, 400.0), principal=(50.0, 50.0),
                               size=(100, 100))
    assert 0 < n < 8**3
    assert grid.occupied_at(torch.tensor([[0.0, 0.0, 0.0]])).item()
    assert not grid.occupied_at(torch.tensor([[0.9, 0.9, 0.9]])).item()
    clone = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8)
    clone.load_state_dict(grid.state_dict())
    assert torch.equal(clone.bitfield, grid.bitfield)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_compacting_inference_equals_full_render(backend, device):
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=16).to(device)

    def field(x, d):
        inside = ((x - 0.5).norm(dim=-1) < 0.3).float()
        return inside * 30.0, torch.sigmoid(x * 4 + d)

    grid.update(0, lambda x: field(x, torch.zeros_like(x))[0], step_size=0.005,
                generator=torch.Generator(device).manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    o = (torch.rand(257, 3, generator=gen) + torch.tensor([0.0, 0.0, -1.5])).to(device)
    d = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 1.0]).to(device)
                                      + 0.2 * torch.randn(257, 3, generator=gen).to(device), dim=-1)
    s = march_rays(o, d, grid, step_size=0.005, backend=backend)
    sig, rgb = field(s.positions, s.directions)
    full = composite_rays(sig, rgb, s.t_start, s.t_end, s.offsets, backend=backend)
    fast = render_rays_compacting(o, d, grid, field, step_size=0.005, samples_per_round=4,
                                  backend=backend)
    torch.testing.assert_close(fast.color, full.color, atol=2e-4, rtol=0)
    torch.testing.assert_close(fast.depth, full.depth, atol=2e-4, rtol=0)


def test_bad_rays_are_named():
    grid = OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=8)
    with pytest.raises(ValueError, match="rays_o must be"):
        march_rays(torch.zeros(4, 2), torch.zeros(4, 2), grid)
    with pytest.raises(TypeError, match="rays_o must be a floating-point tensor"):
        march_rays(torch.zeros(4, 3, dtype=torch.int32), torch.zeros(4, 3), grid)
    with pytest.raises(ValueError, match="near must be"):
        march_rays(torch.zeros(4, 3), torch.ones(4, 3), grid, near=torch.zeros(3))
    with pytest.raises(ValueError, match="aabb must be"):
        OccupancyGrid([0, 0, 0, 1, 1, -1])


def test_cascades_need_a_resolution_that_is_a_multiple_of_4():
    """With resolution % 4 == 2 a coarse cell straddles the finer cascade's box, and the
    kernels' empty-cell skip would jump over occupied candidates: such grids are refused."""
    with pytest.raises(ValueError, match="multiple of 4, got 6"):
        OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=6, cascades=2)
    OccupancyGrid([0, 0, 0, 1, 1, 1], resolution=6)  # one cascade: fine
    geometry = GridGeometry((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 6, 2)
    bits = torch.full((2 * 6**3 // 8,), 255, dtype=torch.uint8)
    o, d = torch.zeros(1, 3), torch.ones(1, 3)
    with pytest.raises(ValueError, match="multiple of 4"):
        march_rays(o, d, bits, geometry)
    with pytest.raises(RuntimeError, match="multiple of 4"):  # the op itself too
        torch.ops.nerfx.march_rays(o, d, torch.zeros(1), torch.ones(1), torch.zeros(1), bits,
                                   [0.5] * 3, [0.5] * 3, 6, 2, 0.01, 0.0, 16)


def test_march_takes_plain_tensors_and_a_host_geometry():
    """The bitfield and a GridGeometry (host numbers) are the whole input; a grid object is only
    a convenience that hands over the same two."""
    grid = random_grid(cascades=2)
    o, d = awkward_rays(64)
    plain = march_rays(o, d, grid.bitfield.clone(), grid.geometry)
    via_grid = march_rays(o, d, grid)
    for a, b in zip(plain, via_grid, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"bitfield must be \[cascades \* resolution\^3 / 8\]"):
        march_rays(o, d, grid.bitfield[:-1], grid.geometry)


def test_ops_do_not_import_render():
    import subprocess
    import sys

    code = ("import sys, nerfx.ops; "
            "assert not [m for m in sys.modules if m.startswith('nerfx.render')], 'render'")
    subprocess.run([sys.executable, "-c", code], check=True)
