"""The crop box (the render inside a box only) and the exported meshes and point clouds the page
draws (loaded in the run's coordinates, capped in size), without a browser."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
import trimesh

from nerfx.cameras import look_at
from nerfx.export.frame import SceneFrame
from nerfx.export.mesh import Mesh, mesh_bytes
from nerfx.export.points import pointcloud_bytes
from nerfx.models.pipelines import InstantNGPPipeline, NeRFPipeline
from nerfx.render.views import render_view
from nerfx.view.__main__ import run_geometry
from nerfx.view.camera import ViewCamera
from nerfx.view.crop import CroppedRenderable, as_box, can_crop, cropped
from nerfx.view.geometry import find_geometry, load_geometry
from nerfx.view.scheduler import FrameScheduler

AABB = [-1.5, -1.5, -1.5, 1.5, 1.5, 1.5]
WHITE = torch.ones(3)
AROUND = as_box([-1, -1, -1], [1, 1, 1])        # holds the ball
BESIDE = as_box([0.8, 0.8, 0.8], [1.5, 1.5, 1.5])   # misses it


class Ball(torch.nn.Module):
    """A field: an opaque red ball of radius 0.5 at the origin, empty elsewhere.
    (positions [n, 3], directions [n, 3]) -> (sigmas [n], rgbs [n, 3])"""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, d):
        sigmas = torch.where(x.norm(dim=-1) < 0.5, 200.0, 0.0)
        return sigmas, torch.tensor([1.0, 0.0, 0.0]).expand(len(x), 3)


def ngp_ball() -> InstantNGPPipeline:
    pipeline = InstantNGPPipeline(AABB, log2_hashmap_size=12, grid_resolution=16)
    pipeline.field = Ball()            # the grid is all occupied before training
    return pipeline.eval()


def nerf_ball() -> NeRFPipeline:
    pipeline = NeRFPipeline(AABB, n_coarse=48, n_fine=32, width=16)
    pipeline.nerf.coarse, pipeline.nerf.fine = Ball(), Ball()
    return pipeline.eval()


def view(model, size: int = 16) -> torch.Tensor:
    """The model's picture from (0, -4, 0) looking at the origin. -> [size, size, 3]"""
    focal = size / 2 / math.tan(0.35)
    intrinsics = torch.tensor([focal, focal, size / 2, size / 2])
    return render_view(model, torch.tensor(look_at((0.0, -4.0, 0.0)), dtype=torch.float32),
                       intrinsics, size, size, WHITE)[0]


@pytest.mark.parametrize("make", [ngp_ball, nerf_ball], ids=["ngp", "nerf"])
def test_a_crop_that_misses_the_object_shows_the_background(make):
    model = make()
    whole = view(model)
    assert (whole[8, 8] - torch.tensor([1.0, 0.0, 0.0])).abs().max() < 0.05   # the ball
    assert can_crop(model)
    torch.testing.assert_close(view(cropped(model, BESIDE)), torch.ones_like(whole))
    empty = as_box([0.5, 0, 0], [-0.5, 1, 1])          # min above max: nothing inside
    torch.testing.assert_close(view(cropped(model, empty)), torch.ones_like(whole))


class Counted(Ball):
    """The ball, counting the samples it is asked for."""

    def __init__(self):
        super().__init__()
        self.samples = 0

    def forward(self, x, d):
        self.samples += len(x)
        return super().forward(x, d)


def test_a_moving_camera_marches_a_coarser_step():
    model = ngp_ball()
    model.field = Counted()
    full = view(model, 24)
    full_samples, model.field.samples = model.field.samples, 0
    coarse = view(cropped(model, None, 2.0), 24)
    # Half the samples, the same picture where the ball is solid (its rim may differ a little).
    assert model.field.samples < 0.6 * full_samples
    assert (coarse - full).abs().mean() < 0.02
    assert cropped(model, None) is model
    nerf = nerf_ball()
    assert cropped(nerf, None, 2.0) is nerf        # NeRF keeps its samples
    with pytest.raises(ValueError, match="step_scale"):
        CroppedRenderable(model, None, 0.5)
    scheduler = FrameScheduler(model, still_after=0.0)
    assert scheduler.view_model("moving").step_scale == 2.0
    assert scheduler.view_model("refine") is model


def test_a_crop_around_the_object_leaves_the_render_unchanged():
    model = ngp_ball()
    torch.testing.assert_close(view(cropped(model, AROUND)), view(model), atol=0, rtol=0)
    nerf = nerf_ball()   # NeRF samples the smaller box more densely: close, not equal
    torch.testing.assert_close(view(cropped(nerf, AROUND)), view(nerf), atol=0.05, rtol=0)


def test_a_crop_cuts_the_object():
    """A box holding the ball's half with x > 0: the left half of the picture is background."""
    model = ngp_ball()
    half = view(cropped(model, as_box([0, -1, -1], [1, 1, 1])))
    whole = view(model)
    assert torch.equal(half[:, :7], torch.ones_like(half[:, :7]))
    torch.testing.assert_close(half[:, 9:], whole[:, 9:])


def test_cropped_renderable_refuses_a_model_without_a_field():
    with pytest.raises(ValueError, match="Instant-NGP or NeRF"):
        CroppedRenderable(torch.nn.Linear(1, 1), AROUND)
    assert cropped(torch.nn.Linear(1, 1), None) is not None     # no box: the model itself


def run_frames(scheduler: FrameScheduler, sent: list, n: int, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while len(sent) < n and time.monotonic() < end:
        scheduler.work(0.5)
        time.sleep(0.01)
    assert len(sent) >= n


def test_a_crop_change_renders_every_page_again_and_a_hidden_render_renders_nothing():
    scheduler = FrameScheduler(ngp_ball(), still_after=0.0)
    sent: list[np.ndarray] = []
    scheduler.add_page(1, lambda picture, job: sent.append(picture))
    camera = ViewCamera(look_at((0.0, -4.0, 0.0)), 0.7, 16, 16)
    scheduler.camera_changed(1, camera, moving=False)
    run_frames(scheduler, sent, 1)
    assert sent[-1][8, 8, 1] < 20                        # red: the ball
    count = len(sent)
    scheduler.set_crop(BESIDE)
    assert scheduler.pending() is not None               # a view change
    run_frames(scheduler, sent, count + 1)
    assert (sent[-1] == 255).all()                       # cropped away
    scheduler.set_crop(BESIDE)                           # the same box: nothing new
    assert scheduler.view_model() is scheduler.view_model()
    scheduler.set_hidden(True)
    assert scheduler.pending() is None and scheduler.work(0.1) < 0.1
    scheduler.set_crop(None)
    scheduler.set_hidden(False)
    count = len(sent)
    run_frames(scheduler, sent, count + 1)
    assert sent[-1][8, 8, 1] < 20


# -- meshes and point clouds --------------------------------------------------------------------
def box_mesh() -> Mesh:
    """A box in the dataset's coordinates, red per vertex."""
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    vertices = np.asarray(box.vertices, np.float32) + np.float32([0.5, -1.0, 2.0])
    colors = np.tile(np.uint8([[200, 10, 10]]), (len(vertices), 1))
    return Mesh(vertices, np.asarray(box.faces), colors,
                np.asarray(box.vertex_normals, np.float32))


def rows(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_a_mesh_is_loaded_in_the_runs_coordinates(tmp_path, suffix):
    """The exporter writes the dataset's coordinates; an Instant-NGP scene's run lives at
    x * scale + offset, and so does the mesh the page draws."""
    m = box_mesh()
    path = tmp_path / f"mesh{suffix}"
    path.write_bytes(mesh_bytes(m, suffix))
    frame = SceneFrame(scale=0.25, offset=(0.5, 0.4, 0.3))
    g = load_geometry(path, frame.to_run)
    expected = m.vertices * 0.25 + np.float32([0.5, 0.4, 0.3])
    np.testing.assert_allclose(rows(g.vertices), rows(expected), atol=1e-6)
    assert g.faces is not None and len(g.faces) == len(m.faces)
    np.testing.assert_allclose(rows(g.vertices[g.faces].mean(1)),
                               rows(expected[m.faces].mean(1)), atol=1e-6)   # same triangles
    assert g.colors is not None and (g.colors == [200, 10, 10]).all()
    assert g.label == f"mesh{suffix} (12 faces)"


def test_the_run_folders_files_are_placed_by_the_scene_frame(tmp_path):
    """python -m nerfx.view's wiring: the scale and offset of the run's Instant-NGP scene
    folder; the run's files hidden at first, --show's shown."""
    scene = tmp_path / "scene"
    scene.mkdir()
    (scene / "transforms.json").write_text(json.dumps({"scale": 0.5, "offset": [0.5, 0.5, 0.5],
                                                       "frames": []}))
    run = tmp_path / "run"
    run.mkdir()
    m = box_mesh()
    (run / "mesh.ply").write_bytes(mesh_bytes(m, ".ply"))
    (run / "notes.txt").write_text("not a mesh")
    points = tmp_path / "points.ply"
    points.write_bytes(pointcloud_bytes(m.vertices, m.colors))
    found = run_geometry(run, [points], {"scene": str(scene)})
    assert [g.path.name for g in found] == ["mesh.ply", "points.ply"]
    assert [g.visible for g in found] == [False, True]
    for g in found:
        np.testing.assert_allclose(rows(g.vertices), rows(m.vertices * 0.5 + 0.5), atol=1e-6)
    assert found[1].faces is None and (found[1].colors == [200, 10, 10]).all()
    with pytest.raises(ValueError, match="no such mesh"):
        run_geometry(run, [tmp_path / "missing.ply"], {"scene": str(scene)})


def test_big_meshes_and_clouds_are_capped(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=4)          # 5120 faces
    path = tmp_path / "sphere.ply"
    path.write_bytes(trimesh.exchange.ply.export_ply(sphere))
    g = load_geometry(path, max_faces=1000)
    assert g.faces is not None and len(g.faces) <= 1000 and g.drawn_from == 5120
    assert "of 5,120" in g.label
    cloud = tmp_path / "cloud.ply"
    xyz = np.random.default_rng(0).normal(size=(5000, 3)).astype(np.float32)
    cloud.write_bytes(pointcloud_bytes(xyz, np.zeros((5000, 3), np.uint8)))
    g = load_geometry(cloud, max_points=700)
    assert len(g.vertices) == 700 and g.drawn_from == 5000 and g.faces is None
    assert find_geometry(tmp_path) == [cloud, path]
    assert find_geometry(tmp_path, [path]) == [cloud, path]      # once each
