"""The viewer's parts without a browser: camera conventions, pictures, the frame scheduler and
the render budget."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nerfx.cameras import image_rays, look_at
from nerfx.specs import Composited
from nerfx.view.budget import RenderBudget
from nerfx.view.camera import (
    ViewCamera,
    frustum_orientation,
    matrix_to_quaternion,
    quaternion_to_matrix,
)
from nerfx.view.frames import FrameJob, FrameRequest, colour_map, height_for, picture
from nerfx.view.scheduler import FrameScheduler


class Sphere(torch.nn.Module):
    """A renderable stand-in: an opaque red unit sphere at the origin on the given background,
    with exact depth; counts the rays it renders."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rays = 0

    def render(self, rays_o, rays_d, background=None):
        self.rays += len(rays_o)
        b = (rays_o * rays_d).sum(-1)
        disc = b**2 - (rays_o**2).sum(-1) + 1
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp_min(0).sqrt(), torch.zeros_like(b))
        color = torch.where(hit[:, None], torch.tensor([1.0, 0.0, 0.0]), background)
        opacity = hit.float()
        return Composited(color, opacity, t * opacity, None)


def camera_at(position, width=40, height=30, fov=0.8) -> ViewCamera:
    pose = look_at(position)
    return ViewCamera(pose, fov, width, height)


def test_quaternions_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        np.testing.assert_allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q, atol=1e-9)


def test_viser_camera_is_opencv_and_poses_are_opengl():
    """A viser camera at (0, -4, 0) looking at the origin (OpenCV frame: +z ahead, +y down,
    world +z up) becomes the OpenGL pose that nerfx.cameras.look_at builds."""
    expected = look_at((0.0, -4.0, 0.0))
    forward, down = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    opencv = np.stack([np.cross(down, forward), down, forward], axis=1)   # columns x, y, z
    camera = ViewCamera.from_viser(matrix_to_quaternion(opencv), np.array([0.0, -4.0, 0.0]),
                                   0.8, 64, 48)
    np.testing.assert_allclose(camera.pose, expected, atol=1e-9)
    np.testing.assert_allclose(camera.viser_wxyz(), matrix_to_quaternion(opencv), atol=1e-9)
    wxyz, position = frustum_orientation(torch.tensor(expected))
    np.testing.assert_allclose(wxyz, matrix_to_quaternion(opencv), atol=1e-9)
    np.testing.assert_allclose(position, [0, -4, 0])


def test_pose_json_is_a_transforms_frame():
    camera = camera_at((3.0, -2.0, 1.0), width=64, height=48, fov=0.9)
    frame = json.loads(camera.transforms_json())
    np.testing.assert_allclose(frame["transform_matrix"], camera.pose, atol=1e-6)
    assert frame["w"] == 64 and frame["h"] == 48
    assert math.isclose(frame["fl_y"], 24 / math.tan(0.45))
    assert math.isclose(frame["camera_angle_x"], 2 * math.atan(32 / frame["fl_x"]))


def test_a_frame_rendered_in_chunks_is_the_whole_view():
    model = Sphere()
    camera = camera_at((0.0, -4.0, 0.0), 41, 31)
    job = FrameJob(FrameRequest(camera, 31), model)
    while not job.finished:
        job.advance(100)                                   # 100 rays a piece, a ragged end
    rgb, depth, opacity = job.outputs()
    o, d = image_rays(torch.tensor(camera.pose, dtype=torch.float32), camera.intrinsics(41, 31),
                      41, 31)
    whole = model.render(o, d, torch.ones(3))
    torch.testing.assert_close(rgb.reshape(-1, 3), whole.color)
    torch.testing.assert_close(depth.reshape(-1), whole.depth)
    assert opacity[15, 20] == 1 and opacity[0, 0] == 0      # the sphere in the middle only
    assert job.picture().shape == (31, 41, 3)


def test_pictures_of_each_mode():
    rgb = torch.rand(4, 5, 3)
    depth = torch.linspace(1, 3, 20).reshape(4, 5)
    opacity = torch.ones(4, 5)
    opacity[0, 0] = 0
    assert np.array_equal(picture("rgb", rgb, depth, opacity), (rgb.numpy() * 255 + 0.5)
                          .astype(np.uint8))
    shaded = picture("depth", rgb, depth * opacity, opacity)
    assert (shaded[0, 0] == 255).all()                      # empty: white
    assert not np.array_equal(shaded[0, 1], shaded[3, 4])   # near and far differ
    np.testing.assert_array_equal(shaded[3, 4], colour_map(np.array(1.0)))
    grey = picture("opacity", rgb, depth, opacity)
    assert grey[0, 0, 0] == 255 and grey[1, 1, 0] == 0
    with pytest.raises(ValueError, match="unknown mode"):
        picture("normals", rgb, depth, opacity)


def test_frame_heights_follow_the_rays_with_a_floor():
    camera = camera_at((0, -4, 0), 800, 400)
    assert height_for(camera, 800 * 400, 64, 1024) == 400
    assert height_for(camera, 2 * 100 * 100, 64, 1024) == 100
    assert height_for(camera, 10, 64, 1024) == 64
    assert height_for(camera_at((0, -4, 0), 40, 30), 10, 64, 1024) == 30


def collect(scheduler: FrameScheduler, key: int) -> list:
    shown = []
    scheduler.add_page(key, lambda picture, job: shown.append(job))
    return shown


def test_moving_frames_are_small_and_a_still_camera_refines():
    budget = RenderBudget(rays_per_second=1e4, floor=8)
    scheduler = FrameScheduler(Sphere(), budget, still_after=0.05)
    shown = collect(scheduler, 1)
    scheduler.camera_changed(1, camera_at((0, -4, 0), 160, 120))
    scheduler.work(10.0)
    assert [j.request.kind for j in shown] == ["moving"]
    assert shown[0].height < 120                            # ~1e4/12 rays
    time.sleep(0.06)
    scheduler.work(10.0)
    assert [j.request.kind for j in shown] == ["moving", "refine"]
    assert (shown[1].width, shown[1].height) == (160, 120)
    assert scheduler.work(10.0) == pytest.approx(0, abs=0.05) and len(shown) == 2   # idle


def test_a_camera_move_cancels_a_refinement():
    scheduler = FrameScheduler(Sphere(), RenderBudget(rays_per_second=1e4, chunk_seconds=0.001),
                               still_after=0.0)
    shown = collect(scheduler, 1)
    scheduler.camera_changed(1, camera_at((0, -4, 0), 200, 150))
    while not shown:
        scheduler.work(0.0)                                 # the quick first frame
    assert shown[0].request.kind == "moving"
    scheduler.work(0.0)                                     # one chunk of the refinement
    assert len(shown) == 1 and scheduler.pages[1].job.request.kind == "refine"
    scheduler.camera_changed(1, camera_at((4, 0, 0), 200, 150))
    scheduler.work(60.0)
    assert (shown[-1].width, shown[-1].height) == (200, 150)
    for job in shown[1:]:                                   # only the new viewpoint's frames
        np.testing.assert_allclose(job.request.camera.pose[:3, 3], [4, 0, 0], atol=1e-9)


def test_pages_take_turns():
    model = Sphere()
    scheduler = FrameScheduler(model, RenderBudget(rays_per_second=1e4), still_after=0.0)
    shown = {k: collect(scheduler, k) for k in (1, 2, 3)}
    for k in shown:
        scheduler.camera_changed(k, camera_at((0, -4 - k, 0), 30, 20))
    scheduler.work(60.0)
    assert all(len(jobs) == 1 for jobs in shown.values())  # below the floor: full size at once
    scheduler.remove_page(2)
    scheduler.camera_changed(1, camera_at((0, -9, 0), 30, 20))
    scheduler.work(60.0)
    assert [len(shown[k]) for k in (1, 2, 3)] == [2, 1, 1]


def test_training_refreshes_a_still_frame_with_new_weights():
    budget = RenderBudget(rays_per_second=1e4, refresh_seconds=0.1)
    scheduler = FrameScheduler(Sphere(), budget, still_after=0.0)
    scheduler.training = True
    shown = collect(scheduler, 1)
    scheduler.camera_changed(1, camera_at((0, -4, 0), 30, 20))
    scheduler.work(60.0)
    assert len(shown) == 1 and scheduler.pending() is None
    scheduler.weights += 1                                  # a training step
    assert scheduler.pending() is None                      # not yet: the frame is fresh
    time.sleep(0.1)
    assert scheduler.pending() in ("refresh", "refine")
    scheduler.work(60.0)
    assert len(shown) == 2


def test_moving_frames_keep_their_own_rate():
    budget = RenderBudget(rays_per_second=1e4, chunk_seconds=1.0)
    assert budget.rate("moving") == 1e4                    # starts at the full step's
    budget.measured(4000, 0.1, "moving")                    # 4e4 rays/s: rises slowly
    assert budget.rate("moving") == pytest.approx(1.3e4) and budget.rate("refine") == 1e4
    budget.measured(4000, 1.0)                              # 4e3 rays/s: falls fast
    assert budget.rate("refine") == pytest.approx(7e3) and budget.rate("moving") > 1e4
    assert budget.chunk_rays(1.0, "moving") > budget.chunk_rays(1.0, "refine")


def test_a_stopped_camera_refines_on_a_larger_share_while_training():
    budget = RenderBudget(rays_per_second=1e5)
    camera = camera_at((0, -4, 0), 960, 540)
    shares = {k: budget.share(k, True) for k in ("moving", "refine", "refresh")}
    assert shares["refresh"] < shares["moving"] < shares["refine"] <= 0.5
    assert budget.share("refine", False) == 1.0             # nothing trains: all of it
    # The sharp frame: what its share renders in refine_seconds (1e5 * 1.25 rays, 16:9).
    assert budget.height("refine", camera, True) == int((1e5 * 1.25 * 540 / 960) ** 0.5)


def test_budget_credit_follows_the_share():
    budget = RenderBudget(max_credit=10.0)
    budget.earn(0.9, 0.1)
    assert budget.credit == pytest.approx(0.1)
    budget.spend(0.3)
    assert budget.credit == pytest.approx(-0.2)             # paid back by the next steps
    budget.earn(1.0, 0.5)
    assert budget.credit == pytest.approx(0.8)
    assert budget.render_share() == pytest.approx(0.3 / 2.2)
    budget.earn(100.0, 0.5)
    assert budget.credit == 10.0                            # capped


def test_a_page_that_fails_is_dropped_and_rendering_goes_on():
    scheduler = FrameScheduler(Sphere(), RenderBudget(rays_per_second=1e4), still_after=0.0)

    def broken(picture, job):
        raise ConnectionError("gone")
    scheduler.add_page(1, broken)
    shown = collect(scheduler, 2)
    scheduler.camera_changed(1, camera_at((0, -4, 0), 30, 20))
    scheduler.camera_changed(2, camera_at((0, -5, 0), 30, 20))
    with pytest.warns(UserWarning, match="stopped receiving"):
        scheduler.work(60.0)
    assert 1 not in scheduler.pages and len(shown) == 1


def test_no_page_no_rendering():
    """Between training steps with no page open the viewer renders nothing."""
    from nerfx.view.server import Viewer
    model = Sphere()
    viewer = Viewer.__new__(Viewer)          # the observer alone, without a server
    viewer.scheduler = FrameScheduler(model)
    viewer._last_seconds = 0.0
    viewer.numbers = SimpleNamespace(record=lambda *a: None)
    viewer.between_steps(SimpleNamespace(step=1, seconds=0.5), {"loss": 0.1})
    assert model.rays == 0 and viewer.scheduler.budget.credit == 0


def test_occupied_cells_are_capped_and_follow_the_grid():
    from nerfx.render import OccupancyGrid
    from nerfx.view.scene import grid_cells
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8)
    cells = grid_cells(grid)
    assert cells.shape == (512, 3) and (np.abs(cells) < 1).all()   # every cell starts occupied
    assert grid_cells(grid, limit=100).shape == (100, 3)
    grid.bitfield.zero_()
    assert grid_cells(grid).shape == (0, 3)
