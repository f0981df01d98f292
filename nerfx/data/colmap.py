"""A COLMAP sparse model as a scene: cameras, poses and the box, as instant-ngp's
scripts/colmap2nerf.py makes them, without writing a transforms.json.

- Cameras: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV and OPENCV_FISHEYE map onto
  nerfx's lens layout (nerfx.cameras: fx, fy, cx, cy, k1, k2, k3, k4, p1, p2, is_fisheye); COLMAP
  and nerfx both put a pixel's centre at +0.5, so cx, cy carry over as they are.
- Poses: COLMAP's world-to-camera (qvec, tvec; OpenCV axes) is inverted to camera-to-world and
  its y and z axes flipped (OpenGL: looks down -z); the world is then changed as colmap2nerf
  changes it: x and y swapped and z flipped, rotated so that the mean of the cameras' up vectors
  is +z, translated so that the point nearest to all pairs of optical axes (weighted by how far
  from parallel they are) is the origin, and scaled so the cameras' mean distance from it is 4
  ("nerf sized"). `Normalisation` keeps that similarity (also applied to the sparse points).
- Then, like any Instant-NGP folder, scale 0.33 and offset 0.5 (Instant-NGP's defaults) put the
  scene around the unit cube, and `aabb_scale` is chosen (docs/radiance-fields.md): the smallest
  power of two whose box holds every camera and 95 % of the sparse points, or the cameras alone
  when the model has no points.
- Splits: images sorted by name, every test_every-th held out, as load_scene does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nerfx.cameras import quaternion_to_matrix
from nerfx.data.colmap_io import Camera, SparseModel, read_model
from nerfx.data.scene_images import load_images
from nerfx.data.scenes import MAX_AABB_SCALE, Scene, SceneError

# colmap2nerf.py scales the cameras' mean distance from the centre to 4.0 ("nerf sized").
NERF_CAMERA_DISTANCE = 4.0
NGP_SCALE, NGP_OFFSET = 0.33, (0.5, 0.5, 0.5)  # instant-ngp's defaults (src/nerf_loader.cu)
POINTS_QUANTILE = 0.95  # the fraction of sparse points the box must hold (outliers ignored)
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")
# colmap2nerf's world change: x and y swapped, z flipped (c2w[[1, 0, 2]], c2w[2] *= -1).
SWAP_FLIP = np.array([[0.0, 1, 0], [1, 0, 0], [0, 0, -1]])


@dataclass
class Normalisation:
    """new = scale * (rotation @ colmap_world - center): from COLMAP's world to the scene's
    (before Instant-NGP's 0.33 and 0.5)."""

    rotation: np.ndarray  # [3, 3]
    center: np.ndarray  # [3]
    scale: float

    def points(self, p: np.ndarray) -> np.ndarray:
        """[N, 3] COLMAP world -> [N, 3] scene."""
        return self.scale * (p @ self.rotation.T - self.center)

    def as_dict(self) -> dict:
        return {"rotation": self.rotation.tolist(), "center": self.center.tolist(),
                "scale": self.scale}


def camera_to_world(qvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """COLMAP's world-to-camera (OpenCV axes) -> [4, 4] camera-to-world, OpenGL axes."""
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = quaternion_to_matrix(qvec), tvec
    c2w = np.linalg.inv(w2c)
    c2w[:3, 1:3] *= -1  # camera y down, z ahead -> y up, looking down -z
    return c2w


def lens_row(camera: Camera, where: str) -> list[float]:
    """COLMAP's parameters -> [11] (fx, fy, cx, cy, k1, k2, k3, k4, p1, p2, is_fisheye)."""
    p = camera.params
    if camera.model not in SUPPORTED:
        raise SceneError(f"{where}: camera model {camera.model} is not supported; nerfx reads "
                         f"{', '.join(SUPPORTED)} (undistort the images with colmap "
                         "image_undistorter, or recalibrate with one of these)")
    if camera.model == "SIMPLE_PINHOLE":
        return [p[0], p[0], p[1], p[2]] + [0.0] * 7
    if camera.model == "PINHOLE":
        return [*p[:4]] + [0.0] * 7
    if camera.model == "SIMPLE_RADIAL":
        return [p[0], p[0], p[1], p[2], p[3]] + [0.0] * 6
    if camera.model == "RADIAL":
        return [p[0], p[0], p[1], p[2], p[3], p[4]] + [0.0] * 5
    if camera.model == "OPENCV":  # fx, fy, cx, cy, k1, k2, p1, p2
        return [*p[:4], p[4], p[5], 0.0, 0.0, p[6], p[7], 0.0]
    return [*p[:4], p[4], p[5], p[6], p[7], 0.0, 0.0, 1.0]  # OPENCV_FISHEYE: k1..k4


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rotation taking unit vector a onto unit vector b (colmap2nerf.py rotmat)."""
    v, c = np.cross(a, b), float(a @ b)
    if c < -1 + 1e-10:  # opposite: half a turn about any axis normal to a
        axis = np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def look_center(c2w: np.ndarray) -> np.ndarray:
    """The point nearest to the cameras' optical axes, pair by pair, weighted by how far from
    parallel each pair is (colmap2nerf.py closest_point_2_lines; points behind either camera
    are clamped to it). c2w: [n, 4, 4] OpenGL. -> [3]"""
    origins = c2w[:, :3, 3]  # [n, 3]
    axes = c2w[:, :3, 2] / np.linalg.norm(c2w[:, :3, 2], axis=-1, keepdims=True)  # +z: backwards
    da, db = axes[:, None], axes[None]  # [n, 1, 3], [1, n, 3]: every pair (a, b)
    c = np.cross(da, db)  # [n, n, 3]
    denom = (c * c).sum(-1)  # [n, n]
    t = origins[None] - origins[:, None]  # [n, n, 3] ob - oa
    ta = np.minimum((t * np.cross(db, c)).sum(-1) / (denom + 1e-10), 0.0)  # det([t, db, c])
    tb = np.minimum((t * np.cross(da, c)).sum(-1) / (denom + 1e-10), 0.0)  # det([t, da, c])
    nearest = 0.5 * (origins[:, None] + ta[..., None] * da + origins[None] + tb[..., None] * db)
    weight = np.where(denom > 1e-5, denom, 0.0)  # [n, n]
    if weight.sum() <= 0:  # all axes parallel
        return origins.mean(0)
    return (nearest * weight[..., None]).sum((0, 1)) / weight.sum()


def normalise(c2w: np.ndarray) -> Normalisation:
    """colmap2nerf's similarity for these camera-to-world poses [n, 4, 4] (OpenGL axes)."""
    swapped = np.einsum("ij,njk->nik", SWAP_FLIP, c2w[:, :3, :])  # [n, 3, 4]
    up = swapped[:, :, 1].sum(0)
    up /= np.linalg.norm(up)
    rotation = _rotation_between(up, np.array([0.0, 0, 1])) @ SWAP_FLIP
    turned = c2w.copy()
    turned[:, :3, :] = np.einsum("ij,njk->nik", rotation, c2w[:, :3, :])
    center = look_center(turned)
    distance = np.linalg.norm(turned[:, :3, 3] - center, axis=-1).mean()
    scale = NERF_CAMERA_DISTANCE / distance if distance > 0 else 1.0
    return Normalisation(rotation, center, float(scale))


def choose_aabb_scale(cameras: np.ndarray, points: np.ndarray) -> int:
    """The smallest power of two whose Instant-NGP box ([0.5 -+ aabb_scale / 2]^3 after scale
    0.33 and offset 0.5) holds every camera and POINTS_QUANTILE of the points, 1 to 128.
    cameras: [n, 3], points: [N, 3] (N may be 0), both in the scene's coordinates."""
    extent = float(np.abs(cameras).max())
    if len(points):
        extent = max(extent, float(np.quantile(np.abs(points).max(-1), POINTS_QUANTILE)))
    needed = 2 * NGP_SCALE * extent  # box side the cascades must reach, in Instant-NGP units
    aabb_scale = 2 ** max(math.ceil(math.log2(max(needed, 1.0)) - 1e-9), 0)
    return int(min(aabb_scale, MAX_AABB_SCALE))


def images_folder(root: Path, model: SparseModel) -> Path:
    """root/images, or the capture's images/ above a model folder given directly."""
    for folder in (root / "images", model.folder.parent.parent / "images",
                   model.folder.parent / "images"):
        if folder.is_dir():
            return folder
    raise SceneError(f"{root}: a COLMAP model ({model.folder}) but no images/ folder beside it")


def load_colmap(root: Path, model_folder: Path, split: str, downscale: int,
                test_every: int) -> tuple[Scene, Normalisation]:
    """One split of a COLMAP capture as a scene (Instant-NGP's box), and its normalisation."""
    model = read_model(model_folder)
    source = model.folder / ("images.bin" if model.binary else "images.txt")
    if not model.images:
        raise SceneError(f"{source}: no registered images (COLMAP's mapper placed none; run "
                         "it again with more overlap between photos)")
    order = sorted(model.images.values(), key=lambda image: image.name)
    for image in order:
        if image.camera_id not in model.cameras:
            raise SceneError(f"{source}: image {image.name!r} names camera {image.camera_id}, "
                             "which cameras file does not hold")
    folder = images_folder(root, model)
    missing = [image.name for image in order if not (folder / image.name).is_file()]
    if missing:
        raise SceneError(f"{folder}: {len(missing)} of the {len(order)} registered images are "
                         f"missing (first: {missing[0]!r})")
    c2w = np.stack([camera_to_world(image.qvec, image.tvec) for image in order])  # [n, 4, 4]
    norm = normalise(c2w)
    c2w[:, :3, :3] = np.einsum("ij,njk->nik", norm.rotation, c2w[:, :3, :3])
    c2w[:, :3, 3] = norm.points(c2w[:, :3, 3])
    aabb_scale = choose_aabb_scale(c2w[:, :3, 3], norm.points(model.points))
    picked = [i for i in range(len(order)) if (i % test_every == 0) == (split != "train")]
    images, rows = load_images([folder / order[i].name for i in picked], downscale), []
    for i, pixels in zip(picked, images, strict=True):
        camera = model.cameras[order[i].camera_id]
        row = lens_row(camera, f"{model.folder}: camera {order[i].camera_id}")
        sx, sy = pixels.shape[1] / camera.width, pixels.shape[0] / camera.height
        row[:4] = [row[0] * sx, row[1] * sy, row[2] * sx, row[3] * sy]  # the lens does not scale
        rows.append(row)
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise SceneError(f"{folder}: images differ in size or channels: {sorted(shapes)}")
    poses = torch.tensor(c2w[picked], dtype=torch.float32)
    poses[:, :3, 3] = poses[:, :3, 3] * NGP_SCALE + torch.tensor(NGP_OFFSET)
    intrinsics = torch.tensor(rows, dtype=torch.float32)
    if not intrinsics[:, 4:].any():  # all pinholes: the short layout
        intrinsics = intrinsics[:, :4].contiguous()
    scene = Scene(torch.from_numpy(np.stack(images)), poses, intrinsics,
                  [order[i].name for i in picked], aabb_scale=aabb_scale, scale=NGP_SCALE,
                  offset=NGP_OFFSET, aabb=(0.0, 0.0, 0.0, 1.0, 1.0, 1.0))
    return scene, norm
