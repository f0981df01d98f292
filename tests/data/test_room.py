"""The built-in room: a capture-like scene (textured room, lens distortion, aabb_scale 4) whose
images go through the lens and whose depth maps give its geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nerfx.cameras import image_rays, project
from nerfx.data import lego, room
from nerfx.data.scenes import load_scene
from tests.helpers import folder_digest


def test_generated_once_deterministic_and_read_as_a_capture(tmp_path):
    a = room.generate(16, root=tmp_path / "a", progress=False)
    b = room.generate(16, root=tmp_path / "b", progress=False)
    assert folder_digest(a) == folder_digest(b)
    assert room.generate(16, root=tmp_path / "a", progress=False) == a  # cached, not redone
    meta = json.loads((a / "transforms.json").read_text())
    assert meta["aabb_scale"] == 4 and meta["k1"] == room.LENS["k1"]
    train, test = load_scene(a, "train"), load_scene(a, "test")
    assert len(train) + len(test) == room.N_VIEWS and len(test) == 7  # every 8th held out
    assert train.images.shape[1:] == (12, 16, 3)  # RGB: background everywhere
    assert train.aabb_scale == 4 and train.cascades == 3 and train.has_lens
    k1, k2, k3, k4, p1, p2, fisheye = train.intrinsics[0, 4:].tolist()
    assert (k1, k2, p1, p2) == pytest.approx(tuple(room.LENS[k] for k in ("k1", "k2", "p1",
                                                                            "p2")))
    assert k3 == k4 == fisheye == 0
    # Instant-NGP's scale and offset put the cameras inside the aabb_scale box, around the cube.
    centres = train.poses[:, :3, 3]
    assert ((centres > 0.5 - 2) & (centres < 0.5 + 2)).all()
    assert (centres - 0.5).norm(dim=-1).min() > 0.5
    for frame in meta["frames"]:
        depth = np.load(a / frame["depth_path"])
        assert depth.shape == (12, 16) and (depth > 0).all()  # the room is everywhere


def test_cameras_on_an_arc_facing_the_toy_inside_the_room():
    poses = room.camera_poses()
    assert len(poses) == room.N_VIEWS
    for pose in poses:
        position, forward = pose[:3, 3], -pose[:3, 2]
        to_toy = -position / np.linalg.norm(position)
        assert forward @ to_toy > 0.99
        assert (np.abs(position[:2]) < room.ROOM_HALF - 1).all() and 0.5 < position[2] < 2.5
    azimuths = [np.degrees(np.arctan2(p[1, 3], p[0, 3])) % 360 for p in poses]
    assert 60 < min(azimuths) and max(azimuths) < 300 and max(azimuths) - min(azimuths) > 200


def cross_view_error(pose_a, depth_a, pose_b, depth_b, camera_read) -> float:
    """Median |distance from camera b - b's depth| over view a's points that b sees, reading
    both views through camera_read's intrinsics."""
    h, w = depth_a.shape
    o, d = image_rays(pose_a, camera_read, w, h)
    points = o + d * depth_a.reshape(-1, 1)  # [h * w, 3]
    uv, ahead = project(points, torch.linalg.inv(pose_b), camera_read)
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # continuous pixel-centre coordinates
    seen = (ahead > 0) & (x >= 0) & (x < w - 1) & (y >= 0) & (y < h - 1)
    x, y = x[seen], y[seen]
    u, v = x.floor().long(), y.floor().long()
    fx, fy = x - u, y - v
    # b's depth bilinearly between the four pixel centres around each point
    depth = ((1 - fx) * (1 - fy) * depth_b[v, u] + fx * (1 - fy) * depth_b[v, u + 1]
             + (1 - fx) * fy * depth_b[v + 1, u] + fx * fy * depth_b[v + 1, u + 1])
    distance = (points[seen] - pose_b[:3, 3]).norm(dim=-1)
    return float((distance - depth).abs().median())


def test_depth_maps_agree_across_views_only_through_the_lens():
    """View a's depth back-projected through the lens lands where view b's depth says; read as
    pinholes (the lens ignored) they disagree ten times more (40x measured): the images need
    undistorting."""
    width = 160
    prims = lego.build_vehicle()
    floor = room.floor_height(prims)
    poses = room.camera_poses()
    (_, depth_a), (_, depth_b) = (room.render_view(poses[i], width, prims, floor) for i in (5, 9))
    pose_a, pose_b = (torch.from_numpy(poses[i]).float() for i in (5, 9))
    depth_a, depth_b = torch.from_numpy(depth_a), torch.from_numpy(depth_b)
    camera = room.intrinsics(width)[1]
    with_lens = cross_view_error(pose_a, depth_a, pose_b, depth_b, camera)
    pinhole = cross_view_error(pose_a, depth_a, pose_b, depth_b, camera[:4])
    assert with_lens < 1e-3  # world units; the room is 10 wide
    assert pinhole > 10 * with_lens, (with_lens, pinhole)


def test_the_room_surrounds_the_toy_at_every_depth():
    """A view's depths span from the toy (about the camera distance) to the far walls."""
    prims = lego.build_vehicle()
    image, depth = room.render_view(room.camera_poses()[20], 64, prims, room.floor_height(prims))
    assert image.shape == (48, 64, 3) and image.std() > 20
    assert depth.min() < 3.5 and depth.max() > 6.0
    assert np.histogram(depth, bins=8)[0].min() > 0  # no gap in depth: background all the way
