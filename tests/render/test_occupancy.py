"""The occupancy grid stores sigma * dt, the optical thickness of one minimal marching step, and
keeps a cell when it exceeds min(0.01, mean) (Instant-NGP): checked against the closed form of a
known density blob, and on old checkpoints that stored raw density."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.render.occupancy import MIN_OPTICAL_THICKNESS, OccupancyGrid, box_step_size

AABB = [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]  # the built-in lego's box (world units)
RES = 32
SIGMA0, WIDTH = 200.0, 0.4  # blob peak density (1 / world unit) and standard deviation (world)


def blob_of_cell(ijk: torch.Tensor) -> torch.Tensor:
    """Density of the blob at the centre of integer cells [M, 3] (float64)."""
    h = (AABB[3] - AABB[0]) / RES
    centre = (ijk.double() + 0.5) * h + AABB[0]
    return SIGMA0 * torch.exp(-(centre**2).sum(-1) / (2 * WIDTH**2))


def blob_field(x: torch.Tensor) -> torch.Tensor:
    """A Gaussian blob in empty space, constant within each grid cell (its value at the cell's
    centre), so every jittered sample of a cell sees the same density."""
    ijk = ((x.double() - AABB[0]) / (AABB[3] - AABB[0]) * RES).floor().clamp(0, RES - 1)
    return blob_of_cell(ijk).float()


def all_cells() -> torch.Tensor:
    i = torch.arange(RES)
    return torch.stack(torch.meshgrid(i, i, i, indexing="ij"), -1).reshape(-1, 3)  # flat order


def test_blob_keeps_exactly_the_cells_whose_step_is_thick_enough():
    dt = box_step_size(AABB)  # sqrt(3)/1024 * 3 world units
    grid = OccupancyGrid(AABB, resolution=RES)
    gen = torch.Generator().manual_seed(0)
    for step in range(grid.warmup_steps):  # the warm-up: every cell, every 16 steps
        grid.update(step, blob_field, step_size=dt, generator=gen)
    expected_thickness = blob_of_cell(all_cells()) * dt
    torch.testing.assert_close(grid.optical_thickness.double(), expected_thickness,
                               rtol=1e-5, atol=0)
    # The blob is thick enough that the mean exceeds 0.01: the threshold is 0.01 itself.
    assert expected_thickness.mean() > MIN_OPTICAL_THICKNESS
    keep = expected_thickness > MIN_OPTICAL_THICKNESS
    centres = grid.cell_points(torch.arange(RES**3), jitter=False)
    assert torch.equal(grid.occupied_at(centres), keep)
    # Closed form of the kept ball: sigma0 exp(-r^2 / 2w^2) dt > 0.01.
    radius = WIDTH * math.sqrt(2 * math.log(SIGMA0 * dt / MIN_OPTICAL_THICKNESS))
    r = centres.double().norm(dim=-1)
    assert keep[r < radius - 1e-6].all() and not keep[r > radius + 1e-6].any()
    # Thresholding raw density (sigma > 0.01) would keep a far larger ball: it must not.
    assert int(keep.sum()) < 0.5 * int((blob_of_cell(all_cells()) > 0.01).sum())


def test_threshold_falls_to_the_mean_for_a_faint_scene():
    dt = box_step_size(AABB)
    grid = OccupancyGrid(AABB, resolution=RES)
    faint = 1e-3 / dt  # thickness 1e-3 < 0.01 everywhere in the blob's shape
    grid.update(0, lambda x: blob_field(x) / SIGMA0 * faint, step_size=dt)
    thickness = blob_of_cell(all_cells()) / SIGMA0 * 1e-3
    assert thickness.max() < MIN_OPTICAL_THICKNESS
    centres = grid.cell_points(torch.arange(RES**3), jitter=False)
    assert torch.equal(grid.occupied_at(centres), thickness > thickness.mean())


def test_every_cascade_stores_the_thickness_of_the_minimal_step():
    """instant-ngp multiplies by MIN_CONE_STEPSIZE() in every cascade (its 2^level factor is
    commented out), which is exact for a constant-step march."""
    dt = 0.01
    grid = OccupancyGrid(AABB, resolution=8, cascades=3)
    grid.update(0, lambda x: torch.full((x.shape[0],), 3.0), step_size=dt)
    torch.testing.assert_close(grid.optical_thickness, torch.full((3 * 8**3,), 3.0 * dt))


def test_update_needs_the_step_and_a_new_step_rescales():
    grid = OccupancyGrid(AABB, resolution=8)
    with pytest.raises(TypeError):
        grid.update(0, lambda x: torch.ones(x.shape[0]))  # raw density without its step
    with pytest.raises(ValueError, match="positive length"):
        grid.update(0, lambda x: torch.ones(x.shape[0]), step_size=0.0)
    grid.update(0, lambda x: torch.full((x.shape[0],), 2.0), step_size=0.01)
    grid.set_step_size(0.04)
    torch.testing.assert_close(grid.optical_thickness, torch.full((8**3,), 0.08))


def test_an_untouched_grid_marches_every_visible_cell():
    grid = OccupancyGrid(AABB, resolution=8)
    pose = torch.eye(4)
    pose[2, 3] = 5.0
    grid.mark_unseen_empty(pose[None], focal=(400.0, 400.0), principal=(50.0, 50.0),
                           size=(100, 100))
    centres = grid.cell_points(torch.arange(8**3), jitter=False)
    assert torch.equal(grid.occupied_at(centres), grid.visible)
    assert grid.visible.any() and not grid.visible.all()


def test_a_cell_is_seen_when_any_corner_lands_in_any_view():
    """Against the definition, corner by corner and camera by camera, through a lens."""
    from nerfx.cameras import look_at, project

    grid = OccupancyGrid(AABB, resolution=8, cascades=2)
    gen = torch.Generator().manual_seed(3)
    eyes = (torch.rand(5, 3, generator=gen) * 2 - 1) * 4
    poses = torch.stack([torch.tensor(look_at(tuple(e.tolist())), dtype=torch.float32)
                         for e in eyes])
    lens = torch.tensor([60.0, 57.0, 15.0, 11.0, -0.1, 0.02, 0, 0, 0.001, -0.002, 0])
    intrinsics = lens.expand(5, 11)
    grid.mark_unseen_empty(poses, (0.0, 0.0), (0.0, 0.0), (30, 24), intrinsics=intrinsics)
    corners = grid._lattice_points(torch.device("cpu"))   # [2, 9, 9, 9, 3]
    seen = torch.zeros(corners.shape[:-1], dtype=torch.bool)
    for pose in poses:
        pixel, depth = project(corners.reshape(-1, 3), torch.linalg.inv(pose), lens)
        x, y = pixel.unbind(-1)
        seen |= ((depth > 0) & (x >= 0) & (x < 30) & (y >= 0) & (y < 24)).view(seen.shape)
    cells = torch.zeros(2, 8, 8, 8, dtype=torch.bool)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                cells |= seen[:, dx:dx + 8, dy:dy + 8, dz:dz + 8]
    assert torch.equal(grid.visible, cells.reshape(-1))
    assert grid.visible.any() and not grid.visible.all()


def test_updates_run_on_instant_ngps_schedule():
    """Every step until step 32, then every step // 16 steps, every 16 from step 256
    (instant-ngp src/testbed.cu: n_prep_to_skip = clamp(step / 16, 1, 16))."""
    grid = OccupancyGrid(AABB, resolution=8)
    steps = [s for s in range(400) if grid.updates_at(s)]
    assert steps[:32] == list(range(32))
    assert [s for s in steps if 32 <= s < 48] == list(range(32, 48, 2))
    assert [s for s in steps if 256 <= s] == list(range(256, 400, 16))
    updated = [s for s in range(40)
               if grid.update(s, lambda x: torch.zeros(x.shape[0]), step_size=0.01)]
    assert updated == [s for s in range(40) if grid.updates_at(s)]


def _camera_seeing_part_of_the_box() -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    pose = torch.eye(4)
    pose[:3, 3] = torch.tensor([0.3, -0.2, 4.0])  # looks down -z at the box, off centre
    return pose[None], torch.tensor([[90.0, 70.0, 40.0, 30.0]]), (80, 60)


def test_a_cell_is_seen_when_any_corner_projects_into_a_camera():
    """instant-ngp's mark_untrained_density_grid tests the 8 corners of each cell, so cells that
    a frustum's border cuts (centre outside, a corner inside) stay trainable."""
    from nerfx.cameras import project

    grid = OccupancyGrid(AABB, resolution=8, cascades=2)
    poses, intrinsics, size = _camera_seeing_part_of_the_box()
    grid.mark_unseen_empty(poses, (0.0, 0.0), (0.0, 0.0), size, intrinsics=intrinsics)
    n = grid.optical_thickness.numel()
    centres = grid.cell_points(torch.arange(n), jitter=False)
    half_cell = (torch.tensor(AABB[3:]) - torch.tensor(AABB[:3])) / 8 / 2
    level = (torch.arange(n) // 8**3).float()[:, None]
    w2c = torch.linalg.inv(poses[0])

    def inside(points: torch.Tensor) -> torch.Tensor:
        pixel, depth = project(points, w2c, intrinsics[0])
        x, y = pixel.unbind(-1)
        return (depth > 0) & (x >= 0) & (x < size[0]) & (y >= 0) & (y < size[1])

    signs = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    corner_seen = torch.stack([inside(centres + s * half_cell * 2**level) for s in signs]).any(0)
    assert torch.equal(grid.visible, corner_seen)
    cut_by_the_border = corner_seen & ~inside(centres)
    assert cut_by_the_border.any()  # the case centres alone would have dropped for good


def test_cells_no_camera_sees_are_never_sampled_again():
    grid = OccupancyGrid(AABB, resolution=8)
    poses, intrinsics, size = _camera_seeing_part_of_the_box()
    grid.mark_unseen_empty(poses, (0.0, 0.0), (0.0, 0.0), size, intrinsics=intrinsics)
    assert not grid.visible.all()
    sampled = []

    def field(x: torch.Tensor) -> torch.Tensor:
        sampled.append(x)
        return torch.full((x.shape[0],), 50.0)

    gen = torch.Generator().manual_seed(0)
    for step in (0, 16, 256, 272):  # the warm-up's full passes and the later partial ones
        grid.update(step, field, step_size=0.01, generator=gen)
    points = torch.cat(sampled)
    assert grid.occupied_at(points).all()  # every sample fell in a seen (and occupied) cell
    assert sum(p.shape[0] for p in sampled[:2]) == 2 * int(grid.visible.sum())


def test_a_bounded_warm_up_sweeps_every_cell_at_a_bounded_cost():
    """warmup_cells caps the cells a warm-up update evaluates (after a first update of all):
    consecutive updates take disjoint slices that together cover every seen cell."""
    grid = OccupancyGrid(AABB, resolution=8, cascades=2, warmup_cells=300)  # 1024 cells
    evaluated: list[torch.Tensor] = []
    cell_points = grid.cell_points

    def recording(cells, **kwargs):
        evaluated.append(cells)
        return cell_points(cells, **kwargs)

    grid.cell_points = recording
    for step in range(5):
        grid.update(step, lambda x: torch.zeros(x.shape[0]), step_size=0.01)
    sizes = [len(c) for c in evaluated]
    n = 2 * 8**3
    assert sizes[0] == n and all(s <= 300 for s in sizes[1:]), sizes
    # Updates 1 to 4 are one sweep (k = ceil(1024 / 300) = 4): each cell exactly once.
    assert torch.equal(torch.cat(evaluated[1:]).sort().values, torch.arange(n))
    with pytest.raises(ValueError, match="warmup_cells"):
        OccupancyGrid(AABB, resolution=8, warmup_cells=0)
