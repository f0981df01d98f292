"""Scenes on disk: NeRF-synthetic (`transforms_{train,val,test}.json`), Instant-NGP
(`transforms.json`) and COLMAP (`sparse/0`, nerfx.data.colmap) folders, read into uint8 images,
camera-to-world poses and intrinsics.

Real captures are expected: intrinsics shared at the top level or per frame (`fl_x`, `fl_y`,
`cx`, `cy`, `w`, `h`; `camera_angle_x` / `camera_angle_y` in radians or `x_fov` / `y_fov` in
degrees, either axis alone), lens distortion (`k1`, `k2`, `k3`, `k4`, `p1`, `p2`, `is_fisheye`;
undistorted at ray generation, see nerfx.cameras), `file_path` with or without an extension and
with Windows separators, images in subfolders, PNG (8 or 16 bits) and JPEG, `aabb_scale` 1 to 128,
and keys nerfx does not use (ignored). One key is nerfx's own: `"pixel_sampling": "point"` says
each pixel is the colour at its centre (a renderer's single ray), not an average over its area
(what a sensor or a supersampling renderer gives); training then draws rays at pixel centres
instead of jittering them. Images read at a downscale are averages, so area-sampled again.

Messy folders are expected too: a missing image is skipped with one warning that counts them (as
long as some remain); a corrupt image, malformed or incomplete JSON, a non-invertible pose, an
image path that leaves the folder, or a bad camera value raises SceneError naming the file and
the problem.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nerfx.cameras import LENS_KEYS, focal_from_fov
from nerfx.data.scene_images import SceneError, load_images

SPLITS = ("train", "val", "test")
DISTORTION_KEYS = LENS_KEYS[:6]  # k1, k2, k3, k4, p1, p2
# Instant-NGP's largest scene: NERF_CASCADES() = 8 cascades of 2^k times the unit cube
# (include/neural-graphics-primitives/nerf_device.cuh), so aabb_scale <= 2^7.
MAX_AABB_SCALE = 128
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


@dataclass
class Scene:
    images: torch.Tensor  # [n, H, W, C] uint8, C = 4 (RGBA) or 3
    poses: torch.Tensor  # [n, 4, 4] float32 camera-to-world (OpenGL: camera looks down -z)
    # [n, 4] float32 (fx, fy, cx, cy) in pixels of `images`, or [n, 11] with each image's lens
    # (k1, k2, k3, k4, p1, p2, is_fisheye) when any image has one (layout: nerfx.cameras)
    intrinsics: torch.Tensor
    names: list[str]  # image paths relative to the folder
    aabb_scale: int = 1  # Instant-NGP's scene extent: cascades cover 2^k times the unit cube
    scale: float = 1.0  # Instant-NGP's pose scale and offset (applied to poses already)
    offset: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # The box the scene lives in (cascade 0): NeRF-synthetic's [-1.5, 1.5]^3, or Instant-NGP's
    # unit cube after its scale and offset.
    aabb: tuple[float, ...] = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)
    # Where the poses were moved from another world (a COLMAP model, nerfx.data.colmap): the
    # similarity new = scale * (rotation @ old - center), before `scale` and `offset` above.
    source_transform: dict | None = None
    # Whether each pixel holds the colour at its centre (see the module note), not an average.
    point_sampled: bool = False

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    @property
    def cascades(self) -> int:
        """Occupancy-grid cascades that cover the scene: log2(aabb_scale) + 1 (Instant-NGP)."""
        return int(math.log2(self.aabb_scale)) + 1

    @property
    def has_lens(self) -> bool:
        """Whether the intrinsics carry lens distortion (nerfx.cameras undistorts the rays)."""
        return self.intrinsics.shape[-1] > 4

    def __len__(self) -> int:
        return self.images.shape[0]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise SceneError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SceneError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list) \
            or not data["frames"]:
        raise SceneError(f"{path}: no 'frames' list (is this a transforms file?)")
    return data


def _inside(root: Path, relative: str, source: Path) -> Path:
    """The image a frame names, which must lie inside the scene folder."""
    relative = relative.replace("\\", "/")  # Windows separators (as Instant-NGP reads them)
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SceneError(f"{source}: image path {relative!r} leaves the scene folder {root}")
    return path


def _find_image(root: Path, relative: str, source: Path) -> Path | None:
    path = _inside(root, relative, source)
    if path.is_file():
        return path
    # NeRF-synthetic and some converters omit the extension ("r_0", "frame.0001").
    for ext in IMAGE_SUFFIXES:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    return None


def _pose(frame: dict, source: Path, index: int) -> np.ndarray:
    try:
        pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise SceneError(f"{source}: frame {index} has no 4x4 'transform_matrix'") from None
    if pose.shape == (3, 4):
        pose = np.vstack([pose, [0, 0, 0, 1]])
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        raise SceneError(f"{source}: frame {index}: transform_matrix must be 4x4 and finite")
    if abs(np.linalg.det(pose[:3, :3])) < 1e-8:
        raise SceneError(f"{source}: frame {index}: transform_matrix is not invertible")
    return pose


def _number(value: object, key: str, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SceneError(f"{where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise SceneError(f"{where}: {key} must be finite, got {value!r}")
    return number


def _focal(entry: dict, width: int, height: int, where: str) -> tuple[float, float] | None:
    """(fx, fy) from one JSON object, or None when it names no focal length. Per axis Instant-NGP
    reads x_fov (degrees), then fl_x, then camera_angle_x (radians); one axis alone serves both
    (src/nerf_loader.cu, read_focal_length)."""
    def axis(name: str, size: int) -> float | None:
        if f"{name}_fov" in entry:
            return focal_from_fov(math.radians(_number(entry[f"{name}_fov"], f"{name}_fov",
                                                        where)), size)
        if f"fl_{name}" in entry:
            return _number(entry[f"fl_{name}"], f"fl_{name}", where)
        if f"camera_angle_{name}" in entry:
            return focal_from_fov(_number(entry[f"camera_angle_{name}"],
                                          f"camera_angle_{name}", where), size)
        return None

    fx, fy = axis("x", width), axis("y", height)
    if fx is None and fy is None:
        return None
    fx = fx if fx is not None else fy
    fy = fy if fy is not None else fx
    if not (fx > 0 and fy > 0):
        raise SceneError(f"{where}: focal length must be positive, got ({fx}, {fy})")
    return fx, fy


def _lens(meta: dict, frame: dict, where: str) -> list[float] | None:
    """(k1, k2, k3, k4, p1, p2, is_fisheye) of a frame, per-frame keys over the shared ones (as
    Instant-NGP's read_lens runs on the file, then on each frame), or None for a pinhole."""
    def get(key: str) -> object:
        return frame.get(key, meta.get(key))

    coeffs = [0.0 if get(key) is None else _number(get(key), key, where)
              for key in DISTORTION_KEYS]
    fisheye = get("is_fisheye")
    if fisheye is None:
        fisheye = False
    if not isinstance(fisheye, bool | int) or fisheye not in (0, 1):
        raise SceneError(f"{where}: is_fisheye must be true or false, got {fisheye!r}")
    if fisheye and (coeffs[4] or coeffs[5]):
        raise SceneError(f"{where}: is_fisheye with p1/p2 ({coeffs[4]}, {coeffs[5]}): the "
                         "equidistant fisheye model has no tangential terms")
    # An equidistant fisheye is not a pinhole even with zero coefficients (theta_d = theta),
    # where Instant-NGP's read_lens would fall back to its perspective mode.
    if not fisheye and not any(coeffs):
        return None
    return coeffs + [float(fisheye)]


def frame_intrinsics(meta: dict, frame: dict, width: int, height: int, source: Path,
                index: int) -> list[float]:
    """(fx, fy, cx, cy) of a frame at its stored resolution, plus its lens
    (k1, k2, k3, k4, p1, p2, is_fisheye) when it has one; per-frame keys first."""
    where = f"{source}: frame {index}"
    focal = _focal(frame, width, height, where) or _focal(meta, width, height, str(source))
    if focal is None:
        raise SceneError(f"{source}: no focal length (fl_x, fl_y, camera_angle_x or _y, x_fov "
                         f"or y_fov) at the top level or in frame {index}")
    cx, cy = frame.get("cx", meta.get("cx")), frame.get("cy", meta.get("cy"))
    pinhole = [*focal, width / 2 if cx is None else _number(cx, "cx", where),
               height / 2 if cy is None else _number(cy, "cy", where)]
    lens = _lens(meta, frame, where)
    return pinhole if lens is None else pinhole + lens


def _read_frames(root: Path, source: Path, meta: dict, frames: list[dict], downscale: int,
                 desc: str) -> Scene:
    images, poses, intrinsics, names, missing = [], [], [], [], []
    found = []  # (index, frame, pose, path, relative) of the frames whose image exists
    for index, frame in enumerate(frames):
        relative = frame.get("file_path") if isinstance(frame, dict) else None
        if not isinstance(relative, str):
            raise SceneError(f"{source}: frame {index} has no 'file_path'")
        pose = _pose(frame, source, index)
        path = _find_image(root, relative, source)
        if path is None:
            missing.append(relative)
            continue
        found.append((index, frame, pose, path, relative))
    decoded = load_images([item[3] for item in found], downscale, desc)
    for (index, frame, pose, _, relative), pixels in zip(found, decoded, strict=True):
        h, w = pixels.shape[:2]
        full_w = frame.get("w", meta.get("w", w * downscale))
        full_h = frame.get("h", meta.get("h", h * downscale))
        full_w = int(_number(full_w, "w", f"{source}: frame {index}"))
        full_h = int(_number(full_h, "h", f"{source}: frame {index}"))
        camera = frame_intrinsics(meta, frame, full_w, full_h, source, index)
        sx, sy = w / full_w, h / full_h
        # Pixels scale with the image; the lens acts on normalised coordinates and does not.
        camera[:4] = [camera[0] * sx, camera[1] * sy, camera[2] * sx, camera[3] * sy]
        images.append(pixels)
        poses.append(pose)
        intrinsics.append(camera)
        names.append(relative)
    if missing:
        if not images:
            raise SceneError(f"{source}: none of its {len(missing)} images exist "
                             f"(first: {missing[0]!r})")
        warnings.warn(f"{source}: skipped {len(missing)} missing image(s) of {len(frames)} "
                      f"(first: {missing[0]!r})", stacklevel=3)
    shapes = {img.shape for img in images}
    if len(shapes) > 1:
        raise SceneError(f"{source}: images differ in size or channels: {sorted(shapes)}")
    if any(len(row) > 4 for row in intrinsics):  # one layout for all: pinholes get a zero lens
        intrinsics = [row if len(row) > 4 else row + [0.0] * len(LENS_KEYS)
                      for row in intrinsics]
    sampling = meta.get("pixel_sampling", "area")
    if sampling not in ("area", "point"):
        raise SceneError(f"{source}: pixel_sampling must be \"area\" or \"point\", got "
                         f"{sampling!r}")
    return Scene(torch.from_numpy(np.stack(images)),
                 torch.tensor(np.stack(poses), dtype=torch.float32),
                 torch.tensor(intrinsics, dtype=torch.float32), names,
                 point_sampled=sampling == "point" and downscale == 1)


def image_size(root: str | Path) -> tuple[int, int]:
    """(width, height) in pixels of a scene folder's images at full size, from the first image's
    header (NeRF-synthetic, Instant-NGP) or the first camera (COLMAP); nothing is decoded."""
    root = Path(root)
    if not root.is_dir():
        raise SceneError(f"{root}: no such scene folder")
    if is_nerf_synthetic(root) or (root / "transforms.json").is_file():
        source = root / ("transforms_train.json" if is_nerf_synthetic(root) else
                         "transforms.json")
        frames = _read_json(source).get("frames", [])
        for frame in frames if isinstance(frames, list) else []:
            path = _find_image(root, str(frame.get("file_path", "")), source) \
                if isinstance(frame, dict) else None
            if path is not None:
                try:
                    with Image.open(path) as img:
                        return img.size
                except (UnidentifiedImageError, OSError) as exc:
                    raise SceneError(f"{path}: cannot read the image ({exc})") from None
        raise SceneError(f"{source}: none of its frames' images was found")
    from nerfx.data import colmap_io  # it builds on this module

    model = colmap_io.find_model(root)
    if model is None:
        raise SceneError(f"{root}: no scene found (no transforms JSON, no COLMAP model)")
    # The cameras file alone: the images and points are read once, by load_scene.
    binary = (model / "cameras.bin").is_file()
    read = colmap_io.read_cameras_bin if binary else colmap_io.read_cameras_txt
    camera = next(iter(read(model / f"cameras{'.bin' if binary else '.txt'}").values()), None)
    if camera is None:
        raise SceneError(f"{model}: the COLMAP model has no camera")
    return camera.width, camera.height


def is_nerf_synthetic(root: Path) -> bool:
    return (root / "transforms_train.json").is_file()


def load_scene(root: str | Path, split: str = "train", *, downscale: int = 1,
               test_every: int = 8) -> Scene:
    """Reads one split of a scene folder.

    NeRF-synthetic folders have a file per split. An Instant-NGP folder has one transforms.json:
    every `test_every`-th image is the test split (and val), the others train. Its `scale` and
    `offset` map poses into the unit cube around (0.5, 0.5, 0.5), as Instant-NGP does. A COLMAP
    model (root/sparse/0, root/sparse or root itself, with images/) is split the same way and
    centred, oriented and scaled as instant-ngp's colmap2nerf does (nerfx.data.colmap).
    """
    root = Path(root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if downscale < 1:
        raise ValueError(f"downscale must be >= 1, got {downscale}")
    if not root.is_dir():
        raise SceneError(f"{root}: no such scene folder")
    if is_nerf_synthetic(root):
        source = root / f"transforms_{split}.json"
        meta = _read_json(source)
        return _read_frames(root, source, meta, meta["frames"], downscale, f"{split} images")
    source = root / "transforms.json"
    if not source.is_file():
        from nerfx.data import colmap, colmap_io  # they build on this module

        model = colmap_io.find_model(root)
        if model is None:
            raise SceneError(f"{root}: neither transforms_train.json (NeRF-synthetic), "
                             "transforms.json (Instant-NGP) nor a COLMAP model (sparse/0/"
                             "cameras.bin or .txt) found")
        scene, norm = colmap.load_colmap(root, model, split, downscale, test_every)
        scene.source_transform = norm.as_dict()
        return scene
    meta = _read_json(source)
    aabb_scale = _number(meta.get("aabb_scale", 1), "aabb_scale", str(source))
    if not aabb_scale.is_integer() or aabb_scale < 1 or int(aabb_scale) & (int(aabb_scale) - 1) \
            or aabb_scale > MAX_AABB_SCALE:
        raise SceneError(f"{source}: aabb_scale must be a power of two from 1 to "
                         f"{MAX_AABB_SCALE}, got {meta.get('aabb_scale')}")
    scale = _number(meta.get("scale", 0.33), "scale", str(source))  # Instant-NGP's NERF_SCALE
    offset = meta.get("offset", (0.5, 0.5, 0.5))
    offset = [offset] * 3 if not isinstance(offset, list | tuple) else offset  # scalar: all axes
    if len(offset) != 3:
        raise SceneError(f"{source}: offset must be a number or 3 numbers, got {offset!r}")
    frames = sorted(meta["frames"],
                    key=lambda f: str(f.get("file_path", "")) if isinstance(f, dict) else "")
    held_out = [f for i, f in enumerate(frames) if i % test_every == 0]
    chosen = [f for i, f in enumerate(frames) if i % test_every != 0] if split == "train" \
        else held_out
    scene = _read_frames(root, source, meta, chosen, downscale, f"{split} images")
    scene.aabb_scale = int(aabb_scale)
    scene.aabb = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    scene.scale = scale
    scene.offset = tuple(_number(v, "offset", str(source)) for v in offset)
    scene.poses[:, :3, 3] = scene.poses[:, :3, 3] * scene.scale + torch.tensor(scene.offset)
    return scene


def composite_on(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """uint8 RGBA [..., 4] (or RGB) -> float RGB [..., 3] in [0, 1] over a background [..., 3]."""
    rgb = images[..., :3].float() / 255
    if images.shape[-1] == 3:
        return rgb
    alpha = images[..., 3:].float() / 255
    return rgb * alpha + background * (1 - alpha)
