"""nerfx.export: marching cubes recovers analytic surfaces within a lattice cell, colours come from
the field, coordinates round-trip through the scene's transform, the accuracy measure scores the
exact lego near 1 and a shifted copy lower, and the command refuses bad input in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from nerfx.cameras import focal_from_fov, image_rays
from nerfx.data.lego import CAMERA_ANGLE_X, build_vehicle, camera_poses, render_view
from nerfx.export import (
    ExportError,
    RadianceField,
    SceneFrame,
    cameras_json,
    mesh,
    mesh_bytes,
    radiance_field,
)
from nerfx.export import __main__ as export_cli
from nerfx.export import density as export_density
from nerfx.export.accuracy import Truth, compare, inside_primitives, primitives_mesh
from nerfx.export.density import can_skip_empty, density_lattice, lattice_shape
from nerfx.export.frame import scene_frame

RADIUS, CENTER = 0.5, (0.1, -0.2, 0.05)
HALF = (0.4, 0.3, 0.2)  # half extents of the analytic box


def sphere(x: torch.Tensor) -> torch.Tensor:
    """Density 100 inside the sphere, 0 outside, a sharp but smooth step. [N, 3] -> [N]"""
    return 100 * torch.sigmoid((RADIUS - (x - torch.tensor(CENTER)).norm(dim=-1)) / 0.005)


def box(x: torch.Tensor) -> torch.Tensor:
    inside = ((x - torch.tensor(CENTER)).abs() <= torch.tensor(HALF)).all(-1)
    return 100 * inside.float()


def field(density, color=(0.2, 0.6, 0.9)) -> RadianceField:
    return RadianceField(density, lambda x, d: torch.tensor(color).expand(x.shape[0], 3),
                         (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0))


@pytest.mark.parametrize("resolution", [48, 97])
def test_sphere_within_a_cell(resolution):
    cell = 2 / (resolution - 1)
    m = mesh(field(sphere), resolution=resolution, threshold=50, progress=False)
    radius = np.linalg.norm(m.vertices - np.asarray(CENTER), axis=1)
    assert np.abs(radius - RADIUS).max() < cell
    surface = trimesh.Trimesh(m.vertices, m.faces)
    assert surface.is_watertight
    assert surface.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.03)
    # Normals point out of the object: along the radius.
    outward = np.einsum("ij,ij->i", m.normals, (m.vertices - np.asarray(CENTER)) / radius[:, None])
    assert outward.min() > 0.8


def test_box_within_a_cell():
    resolution = 64
    cell = 2 / (resolution - 1)
    m = mesh(field(box), resolution=resolution, threshold=50, progress=False)
    rel = np.abs(m.vertices - np.asarray(CENTER))
    # Every vertex lies on the box's surface: one coordinate at the half extent (within a cell),
    # the others inside it.
    gap = np.abs(rel - np.asarray(HALF)).min(axis=1)
    assert gap.max() < cell and (rel < np.asarray(HALF) + cell).all()
    lo, hi = m.vertices.min(0), m.vertices.max(0)
    np.testing.assert_allclose(hi - lo, 2 * np.asarray(HALF), atol=2 * cell)


def test_constant_colour_comes_out_constant():
    m = mesh(field(sphere, color=(0.2, 0.6, 0.9)), resolution=32, threshold=50, progress=False)
    assert (m.colors == np.array([51, 153, 230], dtype=np.uint8)).all()


def test_colour_is_queried_looking_at_the_surface():
    """A field whose colour is its viewing direction, mapped to [0, 1]: each vertex is seen
    along -normal."""
    f = field(sphere)
    f.color = lambda x, d: (d + 1) / 2
    m = mesh(f, resolution=32, threshold=50, progress=False)
    expected = ((-m.normals + 1) / 2 * 255 + 0.5).clip(0, 255)
    assert np.abs(m.colors - expected).max() <= 2


def test_coordinates_round_trip_through_the_scene_transform():
    frame = SceneFrame(scale=0.25, offset=(0.5, 0.4, 0.6), ngp_scale=0.25)
    x = np.random.default_rng(0).normal(size=(100, 3))
    np.testing.assert_allclose(frame.to_dataset(frame.to_run(x)), x, atol=1e-12)
    # The same sphere, centred at CENTER in the run's world, comes out at the dataset's centre
    # with the dataset's radius; the threshold is per dataset unit.
    m = mesh(field(sphere), resolution=64, threshold=frame.density_to_dataset(50), frame=frame,
             progress=False)
    center = frame.to_dataset(np.asarray(CENTER))
    radius = np.linalg.norm(m.vertices - center, axis=1)
    assert np.abs(radius - RADIUS / frame.scale).max() < 2 / 63 / frame.scale
    # A crop box in dataset coordinates: the top half of the sphere only.
    crop = (*(center - 3), *(center + 3))
    crop = (crop[0], crop[1], center[2], crop[3], crop[4], crop[5])
    top = mesh(field(sphere), resolution=64, threshold=frame.density_to_dataset(50),
               frame=frame, crop=crop, progress=False)
    assert top.vertices[:, 2].min() >= center[2] - 1e-4


def test_default_threshold_converts_from_instant_ngps_box(tmp_path):
    """25 in instant-ngp's box: x0.33 per unit of a NeRF-synthetic scene, x scale per unit of an
    Instant-NGP folder, whose run units are that box again."""
    assert SceneFrame().default_threshold == pytest.approx(25 * 0.33)
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"scale": 0.5, "offset": [0.5, 0.5, 0.5], "frames": [{}]}))
    frame = scene_frame(tmp_path)
    assert frame.default_threshold == pytest.approx(12.5)
    assert frame.density_to_run(frame.default_threshold) == pytest.approx(25)


def test_empty_cells_skipped_only_above_the_grid_cut_off():
    from nerfx.render.occupancy import OccupancyGrid
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=16)
    step = math.sqrt(3) / 1024 * 2
    for step_index in range(16):  # warm-up updates: every cell, jittered, max kept
        grid.update(step_index, sphere, step_size=step)
    f = field(sphere)
    f.grid, f.step_size = grid, step
    assert not can_skip_empty(f, 0.001)  # 0.001 * step is below the 0.01 cut-off
    assert can_skip_empty(f, 50)
    shape = lattice_shape(f.box, 33)
    full = density_lattice(f, f.box, shape, progress=False)
    skipped = density_lattice(f, f.box, shape, skip_empty=True, progress=False)
    above = full > 50
    # The grid samples its cells, so a sliver of the surface in a cell it marked empty can be
    # skipped (as in instant-ngp); nearly all of the surface is kept, and most of empty space
    # is not queried.
    assert above.any() and (skipped[above] == full[above]).mean() > 0.98
    assert (skipped == 0).sum() > (full < 1e-3).sum() * 0.5


def test_separable_occupancy_lookup_matches_locating_each_point():
    from nerfx.render.occupancy import OccupancyGrid
    from nerfx.specs import locate, occupied
    grid = OccupancyGrid([-1, -1, -1, 1, 1, 1], resolution=8, cascades=3)
    grid.bitfield.copy_(torch.randint(0, 256, grid.bitfield.shape, dtype=torch.uint8,
                                      generator=torch.Generator().manual_seed(0)))
    axes = [torch.linspace(-5, 3, 23), torch.linspace(-1.5, 0.7, 17), torch.linspace(-0.9, 4.5, 19)]
    keep = export_density.occupied_lattice(grid, axes)
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    outside = points.abs().amax(-1) >= 4
    expected = occupied(grid.bitfield, locate(points, grid.geometry)) | outside
    assert torch.equal(keep.flatten(), expected)


def test_components_and_face_budget():
    def two_spheres(x):
        a = (x - torch.tensor([0.5, 0, 0])).norm(dim=-1) < 0.3
        b = (x + torch.tensor([0.5, 0, 0])).norm(dim=-1) < 0.15
        return 100 * (a | b).float()
    full = mesh(field(two_spheres), resolution=64, threshold=50, progress=False)
    one = mesh(field(two_spheres), resolution=64, threshold=50, largest_components=1,
               progress=False)
    assert one.vertices[:, 0].min() > 0 and len(one.faces) < len(full.faces)
    small = mesh(field(two_spheres), resolution=64, threshold=50, max_faces=500,
                 progress=False)
    assert 0 < len(small.faces) <= 500


@pytest.mark.parametrize("name", ["ngp", "nerf"])
def test_field_of_each_pipeline(name):
    from nerfx.models.pipelines import build_pipeline
    pipeline = build_pipeline({"name": name, "aabb": [-1.5] * 3 + [1.5] * 3,
                               "log2_hashmap_size": 12} if name == "ngp" else
                              {"name": name, "aabb": [-1.5] * 3 + [1.5] * 3, "width": 16})
    f = radiance_field(pipeline.eval())
    x = torch.rand(10, 3) * 3 - 1.5
    with torch.no_grad():
        assert f.density(x).shape == (10,)
        rgb = f.color(x, torch.nn.functional.normalize(torch.ones(10, 3), dim=-1))
    assert rgb.shape == (10, 3) and f.box == (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
    assert (f.grid is not None) == (name == "ngp")


def test_threshold_without_surface_names_the_range():
    with pytest.raises(ExportError, match="leaves no surface.*try a threshold between"):
        mesh(field(sphere), resolution=16, threshold=1000, progress=False)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_mesh_files_read_back(tmp_path, suffix):
    m = mesh(field(sphere), resolution=24, threshold=50, progress=False)
    path = tmp_path / f"m{suffix}"
    path.write_bytes(mesh_bytes(m, suffix))
    back = trimesh.load(path, force="mesh", process=False)
    assert len(back.faces) == len(m.faces)
    np.testing.assert_allclose(np.sort(back.vertices, 0), np.sort(m.vertices, 0), atol=1e-5)
    if suffix == ".ply":
        assert (np.asarray(back.visual.vertex_colors)[:, :3] == m.colors).all()


def small_truth(n_views: int = 24, size: int = 40) -> Truth:
    """Depth maps of the built-in lego from a few training views, back-projected."""
    prims = build_vehicle()
    points, poses, intrinsics, depths = [], [], [], []
    focal = focal_from_fov(CAMERA_ANGLE_X, size)
    camera = torch.tensor([focal, focal, size / 2, size / 2])
    for pose in camera_poses("train")[:n_views]:
        _, depth = render_view(pose, size, prims)
        depth, pose = torch.from_numpy(depth), torch.from_numpy(pose).float()
        o, d = image_rays(pose, camera, size, size)
        t = depth.flatten()
        points.append((o[t > 0] + d[t > 0] * t[t > 0, None]).double().numpy())
        poses.append(pose)
        intrinsics.append(camera)
        depths.append(depth)
    return Truth(np.concatenate(points), torch.stack(poses), torch.stack(intrinsics),
                 torch.stack(depths))


def test_measure_scores_the_primitives_near_one_and_a_shifted_copy_lower():
    truth = small_truth()
    exact = primitives_mesh(build_vehicle())
    good = compare(exact, truth, n_samples=100_000)
    assert good["recall@2%"] > 0.99 and good["f@2%"] > 0.93
    shifted = exact.copy()
    shifted.apply_translation([0.026 * truth.diagonal, 0, 0])
    bad = compare(shifted, truth, n_samples=100_000)
    assert bad["f@1%"] < good["f@1%"] - 0.15 and bad["f@2%"] < good["f@2%"] - 0.05
    assert bad["chamfer"] > 1.5 * good["chamfer"]


def test_lego_occupancy_meshes_to_the_primitives():
    """The mesh pipeline itself, on the lego's exact occupancy standing in for a trained field."""
    prims = build_vehicle()
    f = RadianceField(lambda x: 100 * inside_primitives(x, prims).float(),
                      lambda x, d: torch.full_like(x, 0.5), (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5))
    m = mesh(f, resolution=96, threshold=50, progress=False)
    scores = compare(trimesh.Trimesh(m.vertices, m.faces), small_truth(), n_samples=100_000)
    assert scores["f@2%"] > 0.9 and scores["f@1%"] > 0.75


def test_cameras_round_trip_an_instant_ngp_folder(tmp_path):
    from PIL import Image
    scene = tmp_path / "scene"
    scene.mkdir()
    rng = np.random.default_rng(0)
    frames = []
    for i in range(9):
        Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(scene / f"{i:02d}.png")
        pose = np.eye(4)
        pose[:3, 3] = rng.normal(size=3)
        frames.append({"file_path": f"{i:02d}.png", "transform_matrix": pose.tolist()})
    meta = {"fl_x": 10.0, "fl_y": 11.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "scale": 0.25,
            "offset": [0.5, 0.4, 0.6], "aabb_scale": 4, "k1": 0.01, "frames": frames}
    (scene / "transforms.json").write_text(json.dumps(meta))
    config = {"scene": str(scene), "load_downscale": 2, "settings": {"test_every": 8}}
    out = cameras_json(config)
    assert out["scale"] == 0.25 and out["offset"] == [0.5, 0.4, 0.6] and out["aabb_scale"] == 4
    by_name = {f["file_path"]: f for f in out["frames"]}
    assert sorted(f["split"] for f in out["frames"]) == ["test"] * 2 + ["train"] * 7
    for original in frames:
        written = by_name[original["file_path"]]
        np.testing.assert_allclose(written["transform_matrix"], original["transform_matrix"],
                                   atol=1e-6)
        assert written["fl_x"] == pytest.approx(10) and written["cy"] == pytest.approx(3)
        assert (written["w"], written["h"]) == (8, 6) and written["k1"] == pytest.approx(0.01)


def test_command_refuses_bad_input_in_one_line(tmp_path, capsys):
    def fails(argv, match):
        with pytest.raises(SystemExit) as exc:
            export_cli.main(argv)
        assert isinstance(exc.value.code, str) and "\n" not in exc.value.code
        assert exc.value.code.startswith("nerfx.export: ")
        assert match in exc.value.code, exc.value.code

    fails(["mesh", str(tmp_path / "nope"), "--out", str(tmp_path / "m.ply")],
          "not a nerfx run folder")
    fails(["mesh", str(tmp_path), "--out", str(tmp_path / "m.stl")], "extension")
    (tmp_path / "m.ply").write_bytes(b"old")
    fails(["mesh", str(tmp_path), "--out", str(tmp_path / "m.ply")], "--force")
    assert (tmp_path / "m.ply").read_bytes() == b"old"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "ngp", "format_version": 2}))
    fails(["cameras", str(run), "--out", str(tmp_path / "c.json")], "names no scene")
    fails(["mesh", str(run), "--out", str(tmp_path / "x.ply"), "--crop", "0,0,1"], "--crop")
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.slow
def test_commands_on_a_tiny_run(tmp_path, monkeypatch):
    from nerfx import train
    from nerfx.export import density
    monkeypatch.setenv("NERFX_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    train.main(["--scene", "lego", "--fast", "--downscale", "100", "--eval-views", "1",
                "--video-frames", "0", "--device", "cpu", "--steps", "12", "--batch-rays",
                "256", "--out", str(run)])
    out = tmp_path / "out"
    # A threshold inside the densities a 12-step field has.
    from nerfx.export.mesh import density_volume
    from nerfx.models.pipelines import load_pipeline
    volume, _ = density_volume(radiance_field(load_pipeline(run)[0]), resolution=32,
                               threshold=1e9, progress=False)
    threshold = float(np.quantile(volume[volume > 0], 0.5))
    written = export_cli.main(["mesh", str(run), "--out", str(out / "m.ply"), "--resolution",
                               "32", "--threshold", f"{threshold}"])
    surface = trimesh.load(written, process=False)
    assert len(surface.faces) > 0 and np.abs(surface.vertices).max() <= 1.5 + 1e-4
    cloud = export_cli.main(["pointcloud", str(run), "--out", str(out / "p.ply"), "--n", "50",
                             "--min-opacity", "0.01"])
    assert 0 < len(trimesh.load(cloud).vertices) <= 50
    cameras = json.loads(export_cli.main(["cameras", str(run), "--out",
                                          str(out / "c.json")]).read_text())
    original = json.loads((Path(json.loads((run / "config.json").read_text())["scene"])
                           / "transforms_train.json").read_text())
    train_frames = [f for f in cameras["frames"] if f["split"] == "train"]
    assert len(train_frames) == len(original["frames"])
    np.testing.assert_allclose(train_frames[0]["transform_matrix"],
                               original["frames"][0]["transform_matrix"], atol=1e-6)
    assert cameras["camera_angle_x"] == pytest.approx(original["camera_angle_x"], rel=1e-5)

    def fails(argv, match):
        with pytest.raises(SystemExit) as exc:
            export_cli.main(argv)
        assert "\n" not in exc.value.code and match in exc.value.code, exc.value.code

    fails(["mesh", str(run), "--out", str(out / "m.ply")], "--force")
    fails(["mesh", str(run), "--out", str(out / "n.ply"), "--resolution", "16",
           "--threshold", "1e9"], "try a threshold between")
    monkeypatch.setattr(density, "available_memory", lambda: 2**20)
    fails(["mesh", str(run), "--out", str(out / "n.ply")], "GiB")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run / "config.json").read_text())
    fails(["mesh", str(empty), "--out", str(out / "n.ply")], "no checkpoint")
    assert not (out / "n.ply").exists() and not list(out.glob("*.tmp"))


def test_the_rooms_depth_maps_are_a_truth_the_room_and_toy_meshes_match(tmp_path):
    """The built-in room (Instant-NGP layout, lens) gives --compare its truth: its exact walls
    and toy score near 1, the same shifted off every surface by 1.5 % of the diagonal far
    lower."""
    from nerfx.data import room
    from nerfx.export.accuracy import load_truth

    folder = room.generate(48, root=tmp_path, progress=False)
    truth = load_truth(folder)
    assert truth.intrinsics.shape[1] == 11 and len(truth.poses) == room.N_VIEWS
    floor = room.floor_height(build_vehicle())
    walls = trimesh.creation.box(bounds=[[-room.ROOM_HALF, -room.ROOM_HALF, floor],
                                         [room.ROOM_HALF, room.ROOM_HALF, room.ROOM_TOP]])
    exact = trimesh.util.concatenate([walls, primitives_mesh(build_vehicle())])
    good = compare(exact, truth, n_samples=200_000)
    assert good["recall@1%"] > 0.97 and good["f@1%"] > 0.9, good
    shifted = exact.copy()
    shifted.apply_translation([0.015 * truth.diagonal] * 3)  # every surface off by 1.5 %
    assert compare(shifted, truth, n_samples=200_000)["f@1%"] < good["f@1%"] - 0.3
