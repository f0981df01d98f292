"""COLMAP sparse models as scenes: both formats, the camera models, colmap2nerf's similarity
(round trip of the room's known cameras), aabb_scale from cameras and points, bad input."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from nerfx.cameras import matrix_to_quaternion, quaternion_to_matrix
from nerfx.data import colmap, room
from nerfx.data.colmap_io import Camera, read_model
from nerfx.data.scenes import SceneError, load_scene
from tests.data.colmap_writer import (
    WORLD_SHIFT,
    WORLD_TURN,
    room_as_colmap,
    to_colmap_world,
    write_model,
)


@pytest.fixture(scope="module")
def room_folder(tmp_path_factory):
    return room.generate(32, root=tmp_path_factory.mktemp("builtin"), progress=False)


def both_splits(folder):
    train, test = load_scene(folder, "train"), load_scene(folder, "test")
    return train, test


@pytest.mark.parametrize("binary", [True, False])
def test_the_rooms_cameras_round_trip_through_a_colmap_model(tmp_path, room_folder, binary):
    capture = room_as_colmap(room_folder, tmp_path / "capture", binary)
    meta = json.loads((room_folder / "transforms.json").read_text())
    truth = {f"images/{k['file_path'].split('/')[-1]}":
             to_colmap_world(np.array(k["transform_matrix"])) for k in meta["frames"]}
    reference = both_splits(room_folder)  # the same room read from its transforms.json
    for scene, ref in zip(both_splits(capture), reference, strict=True):
        assert scene.names == [n.split("/")[-1] for n in ref.names]  # same split, same order
        assert torch.equal(scene.images, ref.images)
        torch.testing.assert_close(scene.intrinsics, ref.intrinsics)  # OPENCV -> nerfx lens
        t = scene.source_transform
        rotation, center, scale = (np.array(t["rotation"]), np.array(t["center"]), t["scale"])
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        for pose, name in zip(scene.poses.double().numpy(), scene.names, strict=True):
            original = truth[f"images/{name}"]
            position = (pose[:3, 3] - 0.5) / 0.33  # Instant-NGP's scale and offset undone
            np.testing.assert_allclose(position, scale * (rotation @ original[:3, 3] - center),
                                       atol=2e-5)
            np.testing.assert_allclose(pose[:3, :3], rotation @ original[:3, :3], atol=2e-6)
        assert scene.has_lens and scene.cascades == int(np.log2(scene.aabb_scale)) + 1
    # aabb_scale: the smallest power of two whose box holds the cameras and 95 % of the points
    # (the room's walls, turned about the up axis by COLMAP's world, reach 8 where the room's own
    # transforms.json says 4).
    points = read_model(capture / "sparse" / "0").points
    points = 0.33 * t["scale"] * (points @ rotation.T - center) + 0.5  # Instant-NGP's units
    cameras = torch.cat([s.poses[:, :3, 3] for s in both_splits(capture)]).numpy()

    def holds(aabb_scale: int) -> bool:
        half = aabb_scale / 2
        inside = (np.abs(points - 0.5) <= half).all(-1)
        return bool((np.abs(cameras - 0.5) <= half).all() and inside.mean() >= 0.95)

    aabb_scale = load_scene(capture, "test").aabb_scale
    assert aabb_scale == 8 and holds(aabb_scale) and not holds(aabb_scale // 2)


def test_colmap2nerfs_orientation_centre_and_scale(tmp_path, room_folder):
    capture = room_as_colmap(room_folder, tmp_path / "capture", binary=True)
    train, test = both_splits(capture)
    poses = torch.cat([train.poses, test.poses]).double()
    positions = (poses[:, :3, 3] - 0.5) / 0.33
    up = poses[:, :3, 1].sum(0)
    torch.testing.assert_close(up / up.norm(), torch.tensor([0.0, 0, 1], dtype=torch.float64))
    assert float(positions.norm(dim=-1).mean()) == pytest.approx(4.0, rel=0.05)  # "nerf sized"
    # The cameras look at the toy, so the point nearest their axes is the toy's centre: the
    # room's origin (WORLD_SHIFT in COLMAP's world) goes to the scene's.
    t = train.source_transform
    rotation = np.array(t["rotation"])
    toy = t["scale"] * (rotation @ WORLD_SHIFT - np.array(t["center"]))
    assert np.linalg.norm(toy) < 0.2 < np.linalg.norm(WORLD_SHIFT) * t["scale"]
    # The room's up (its z, turned into COLMAP's world) is the scene's up again, near enough:
    # the cameras' mean up leans a little towards the toy they look down at.
    assert (rotation @ WORLD_TURN @ [0, 0, 1.0])[2] > 0.97


def test_aabb_scale_holds_the_cameras_and_most_points():
    cameras = np.array([[4.0, 0, 0], [0, -3.5, 0.5]])
    assert colmap.choose_aabb_scale(cameras, np.zeros((0, 3))) == 4  # 2 * 0.33 * 4 = 2.64
    points = np.concatenate([np.full((97, 3), 10.0), np.full((3, 3), 1000.0)])
    assert colmap.choose_aabb_scale(cameras, points) == 8  # 6.6; the 3 % far outliers ignored
    assert colmap.choose_aabb_scale(cameras * 0.1, np.zeros((0, 3))) == 1
    assert colmap.choose_aabb_scale(cameras * 1e4, np.zeros((0, 3))) == 128


def test_without_points_the_cameras_alone_choose(tmp_path, room_folder):
    capture = room_as_colmap(room_folder, tmp_path / "capture", binary=False,
                             with_points=False)
    assert load_scene(capture, "test").aabb_scale == 4


@pytest.mark.parametrize("model, params, lens", [
    ("SIMPLE_PINHOLE", (30.0, 16, 12), None),
    ("PINHOLE", (30.0, 31, 16, 12), None),
    ("SIMPLE_RADIAL", (30.0, 16, 12, 0.1), [0.1, 0, 0, 0, 0, 0, 0]),
    ("RADIAL", (30.0, 16, 12, 0.1, -0.02), [0.1, -0.02, 0, 0, 0, 0, 0]),
    ("OPENCV", (30.0, 31, 16, 12, 0.1, -0.02, 0.003, 0.004), [0.1, -0.02, 0, 0, 0.003, 0.004, 0]),
    ("OPENCV_FISHEYE", (30.0, 31, 16, 12, 0.1, -0.02, 0.01, 0.002),
     [0.1, -0.02, 0.01, 0.002, 0, 0, 1]),
])
def test_camera_models_map_onto_nerfxs_lens(model, params, lens):
    row = colmap.lens_row(Camera(model, 32, 24, params), "here")
    fx = params[0]
    fy = params[1] if model in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE") else fx
    assert row[:2] == [fx, fy] and row[2:4] == [16, 12]
    assert row[4:] == (lens or [0.0] * 7)


def test_the_room_trains_from_colmap_with_downscaled_images(tmp_path, room_folder):
    capture = room_as_colmap(room_folder, tmp_path / "capture", binary=True)
    half = load_scene(capture, "train", downscale=2)
    full = load_scene(capture, "train")
    assert half.images.shape[1:3] == (12, 16)
    torch.testing.assert_close(half.intrinsics[:, :4], full.intrinsics[:, :4] / 2)
    torch.testing.assert_close(half.intrinsics[:, 4:], full.intrinsics[:, 4:])


# ---------------------------------------------------------------------------------------------
# Bad input: one line each


def test_an_unsupported_camera_model_is_named(tmp_path, room_folder):
    capture = room_as_colmap(room_folder, tmp_path / "c", binary=False, model="FULL_OPENCV")
    text = (capture / "sparse/0/cameras.txt").read_text()  # 12 parameters for FULL_OPENCV
    (capture / "sparse/0/cameras.txt").write_text(text.rstrip() + " 0.0 0.0 0.0 0.0\n")
    with pytest.raises(SceneError, match=r"camera model FULL_OPENCV is not supported") as e:
        load_scene(capture, "train")
    assert "\n" not in str(e.value)


def test_missing_images_are_counted(tmp_path, room_folder):
    capture = room_as_colmap(room_folder, tmp_path / "c", binary=True)
    for name in ("frame_003.png", "frame_010.png"):
        (capture / "images" / name).unlink()
    with pytest.raises(SceneError, match=r"2 of the 50 registered images are missing \(first: "
                                         r"'frame_003.png'\)"):
        load_scene(capture, "train")


@pytest.mark.parametrize("binary", [True, False])
def test_a_model_with_no_registered_images(tmp_path, binary):
    write_model(tmp_path / "sparse" / "0", {1: ("PINHOLE", 8, 6, (5.0, 5, 4, 3))}, [],
                np.zeros((0, 3)), binary)
    (tmp_path / "images").mkdir()
    with pytest.raises(SceneError, match="no registered images"):
        load_scene(tmp_path, "train")


@pytest.mark.parametrize("part, keep", [("cameras.bin", 20), ("images.bin", 70),
                                        ("images.bin", 100), ("points3D.bin", 50)])
def test_a_binary_file_cut_short(tmp_path, room_folder, part, keep):
    capture = room_as_colmap(room_folder, tmp_path / "c", binary=True)
    path = capture / "sparse" / "0" / part
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(SceneError, match=rf"{part}: cut short .* the file is incomplete") as e:
        load_scene(capture, "train")
    assert "\n" not in str(e.value)


def test_no_scene_of_any_kind_is_named(tmp_path):
    with pytest.raises(SceneError, match="nor a COLMAP model"):
        load_scene(tmp_path, "train")


def test_quaternions_of_the_writer_and_reader_agree():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(q)), q, atol=1e-12)
    assert struct.calcsize("<i7di") == 64  # COLMAP's image header, packed
