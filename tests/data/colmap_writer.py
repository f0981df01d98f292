"""A small COLMAP model writer for the tests (binary and text, COLMAP's layouts as
nerfx.data.colmap_io documents them), and a model of the built-in room from its known cameras."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from nerfx.cameras import matrix_to_quaternion

MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
             "OPENCV_FISHEYE": 5, "FULL_OPENCV": 6}


def world_to_camera(c2w_gl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenGL camera-to-world [4, 4] -> COLMAP's (qvec, tvec), OpenCV axes."""
    c2w = c2w_gl.copy()
    c2w[:3, 1:3] *= -1
    w2c = np.linalg.inv(c2w)
    return matrix_to_quaternion(w2c[:3, :3]), w2c[:3, 3]


def write_model(folder: Path, cameras: dict, images: list, points: np.ndarray,
                binary: bool) -> Path:
    """cameras {id: (model, width, height, params)}; images [(id, qvec, tvec, camera_id,
    name)]; points [N, 3]. Each image gets two 2D points in the files (readers must skip them)."""
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        data = struct.pack("<Q", len(cameras))
        for cid, (model, w, h, params) in cameras.items():
            data += struct.pack("<iiQQ", cid, MODEL_IDS[model], w, h)
            data += struct.pack(f"<{len(params)}d", *params)
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(images))
        for iid, q, t, cid, name in images:
            data += struct.pack("<i7di", iid, *q, *t, cid) + name.encode() + b"\0"
            data += struct.pack("<Q", 2) + struct.pack("<ddq", 1.5, 2.5, -1) * 2
        (folder / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(points))
        for i, p in enumerate(points):
            data += struct.pack("<Q3d3BdQ", i + 1, *p, 200, 100, 50, 0.5, 2)
            data += struct.pack("<ii", 1, 0) + struct.pack("<ii", 2, 1)
        (folder / "points3D.bin").write_bytes(data)
        return folder
    lines = ["# Camera list with one line of data per camera:"]
    lines += [f"{cid} {model} {w} {h} " + " ".join(repr(float(v)) for v in params)
              for cid, (model, w, h, params) in cameras.items()]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:"]
    for k, (iid, q, t, cid, name) in enumerate(images):
        lines.append(f"{iid} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {cid} {name}")
        lines.append("" if k % 2 else "1.5 2.5 -1 3.5 4.5 -1")  # empty points lines too
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list"] + [f"{i + 1} {p[0]!r} {p[1]!r} {p[2]!r} 200 100 50 0.5 1 0 2 1"
                                   for i, p in enumerate(points.tolist())]
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")
    return folder


# COLMAP's world is its own: the room as COLMAP might place it, turned, moved and scaled.
WORLD_TURN = np.array([[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]])  # a rotation
WORLD_SHIFT, WORLD_SCALE = np.array([2.0, -1.0, 0.5]), 0.7


def to_colmap_world(c2w: np.ndarray) -> np.ndarray:
    """A room camera-to-world [4, 4] in the COLMAP model's world."""
    out = c2w.copy()
    out[:3, :3] = WORLD_TURN @ c2w[:3, :3]
    out[:3, 3] = WORLD_SCALE * WORLD_TURN @ c2w[:3, 3] + WORLD_SHIFT
    return out


def room_as_colmap(room_folder: Path, out: Path, binary: bool, with_points: bool = True,
                   model: str = "OPENCV", point_stride: int = 7) -> Path:
    """A COLMAP capture of the built-in room: its images, its cameras as one OPENCV camera, and
    sparse points back-projected from every point_stride-th pixel of a few views' depth maps,
    all in a world turned, moved and scaled from the room's (to_colmap_world)."""
    import torch

    from nerfx.cameras import image_rays

    meta = json.loads((room_folder / "transforms.json").read_text())
    params = [meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], meta["k1"], meta["k2"],
              meta["p1"], meta["p2"]]
    cameras = {1: (model, meta["w"], meta["h"], params)}
    images, points = [], []
    shutil.copytree(room_folder / "images", out / "images")
    lens = torch.tensor(params[:4] + [params[4], params[5], 0, 0, params[6], params[7], 0])
    for k, frame in enumerate(meta["frames"]):
        pose = np.array(frame["transform_matrix"])
        q, t = world_to_camera(to_colmap_world(pose))
        images.append((k + 3, q, t, 1, Path(frame["file_path"]).name))
        if with_points and k % 10 == 0:
            depth = torch.from_numpy(np.load(room_folder / frame["depth_path"]))
            o, d = image_rays(torch.tensor(pose, dtype=torch.float32), lens, meta["w"],
                              meta["h"])
            points.append((o + d * depth.reshape(-1, 1))[::point_stride].double().numpy())
    cloud = np.concatenate(points) if points else np.zeros((0, 3))
    cloud = WORLD_SCALE * cloud @ WORLD_TURN.T + WORLD_SHIFT
    write_model(out / "sparse" / "0", cameras, images, cloud, binary)
    return out
