"""Scenes on disk: NeRF-synthetic (`transforms_{train,val,test}.json`) and Instant-NGP
(`transforms.json`) folders, read into uint8 images, camera-to-world poses and intrinsics.

Messy folders are expected: a missing image is skipped with one warning that counts them (as long
as some remain); a corrupt image, malformed or incomplete JSON, a non-invertible pose, an image
path that leaves the folder, or lens distortion (not applied by nerfx) raises SceneError naming
the file and the problem.
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
from tqdm import tqdm

SPLITS = ("train", "val", "test")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


class SceneError(ValueError):
    """A scene folder that cannot be read; the message names the file and the problem."""


@dataclass
class Scene:
    images: torch.Tensor  # [n, H, W, C] uint8, C = 4 (RGBA) or 3
    poses: torch.Tensor  # [n, 4, 4] float32 camera-to-world (OpenGL: camera looks down -z)
    intrinsics: torch.Tensor  # [n, 4] float32 (fx, fy, cx, cy) in pixels of `images`
    names: list[str]  # image paths relative to the folder
    aabb_scale: int = 1  # Instant-NGP's scene extent: cascades cover 2^k times the unit cube
    scale: float = 1.0  # Instant-NGP's pose scale and offset (applied to poses already)
    offset: tuple[float, float, float] = (0.5, 0.5, 0.5)
    # The box the scene lives in (cascade 0): NeRF-synthetic's [-1.5, 1.5]^3, or Instant-NGP's
    # unit cube after its scale and offset.
    aabb: tuple[float, ...] = (-1.5, -1.5, -1.5, 1.5, 1.5, 1.5)

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

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
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise SceneError(f"{source}: image path {relative!r} leaves the scene folder {root}")
    return path


def _find_image(root: Path, relative: str, source: Path) -> Path | None:
    path = _inside(root, relative, source)
    if path.suffix == "":  # NeRF-synthetic omits the extension
        for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG"):
            if path.with_suffix(ext).is_file():
                return path.with_suffix(ext)
        return None
    return path if path.is_file() else None


def _load_image(path: Path, downscale: int) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB")
            if downscale > 1:
                size = (max(img.width // downscale, 1), max(img.height // downscale, 1))
                img = img.resize(size, Image.Resampling.BOX)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise SceneError(f"{path}: cannot read the image ({exc})") from None


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


def _intrinsics(meta: dict, frame: dict, width: int, height: int, source: Path) -> list[float]:
    """(fx, fy, cx, cy) of a frame at its stored resolution, per-frame keys first."""
    def get(key):
        return frame.get(key, meta.get(key))

    for key in DISTORTION_KEYS:
        if get(key) not in (None, 0, 0.0):
            raise SceneError(f"{source}: lens distortion ({key}={get(key)}) is not supported; "
                             "undistort the images first (e.g. COLMAP image_undistorter)")
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * width / math.tan(0.5 * float(get("camera_angle_x")))
    if fy is None and get("camera_angle_y") is not None:
        fy = 0.5 * height / math.tan(0.5 * float(get("camera_angle_y")))
    if fx is None and fy is None:
        raise SceneError(f"{source}: no focal length (fl_x, fl_y, camera_angle_x or _y)")
    fx = float(fx if fx is not None else fy)
    fy = float(fy if fy is not None else fx)
    cx, cy = get("cx"), get("cy")
    return [fx, fy, float(cx) if cx is not None else width / 2,
            float(cy) if cy is not None else height / 2]


def _read_frames(root: Path, source: Path, meta: dict, frames: list[dict], downscale: int,
                 desc: str) -> Scene:
    images, poses, intrinsics, names, missing = [], [], [], [], []
    for index, frame in enumerate(tqdm(frames, desc=desc, unit="img", leave=False)):
        relative = frame.get("file_path") if isinstance(frame, dict) else None
        if not isinstance(relative, str):
            raise SceneError(f"{source}: frame {index} has no 'file_path'")
        pose = _pose(frame, source, index)
        path = _find_image(root, relative, source)
        if path is None:
            missing.append(relative)
            continue
        pixels = _load_image(path, downscale)
        h, w = pixels.shape[:2]
        full_w = int(frame.get("w", meta.get("w", w * downscale)))
        full_h = int(frame.get("h", meta.get("h", h * downscale)))
        fx, fy, cx, cy = _intrinsics(meta, frame, full_w, full_h, source)
        sx, sy = w / full_w, h / full_h
        images.append(pixels)
        poses.append(pose)
        intrinsics.append([fx * sx, fy * sy, cx * sx, cy * sy])
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
    return Scene(torch.from_numpy(np.stack(images)),
                 torch.tensor(np.stack(poses), dtype=torch.float32),
                 torch.tensor(intrinsics, dtype=torch.float32), names)


def is_nerf_synthetic(root: Path) -> bool:
    return (root / "transforms_train.json").is_file()


def load_scene(root: str | Path, split: str = "train", *, downscale: int = 1,
               test_every: int = 8) -> Scene:
    """Reads one split of a scene folder.

    NeRF-synthetic folders have a file per split. An Instant-NGP folder has one transforms.json:
    every `test_every`-th image is the test split (and val), the others train. Its `scale` and
    `offset` map poses into the unit cube around (0.5, 0.5, 0.5), as Instant-NGP does.
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
        raise SceneError(f"{root}: neither transforms_train.json (NeRF-synthetic) nor "
                         "transforms.json (Instant-NGP) found")
    meta = _read_json(source)
    frames = sorted(meta["frames"], key=lambda f: str(f.get("file_path", "")))
    held_out = [f for i, f in enumerate(frames) if i % test_every == 0]
    chosen = [f for i, f in enumerate(frames) if i % test_every != 0] if split == "train" \
        else held_out
    scene = _read_frames(root, source, meta, chosen, downscale, f"{split} images")
    scene.aabb_scale = int(meta.get("aabb_scale", 1))
    if scene.aabb_scale < 1 or scene.aabb_scale & (scene.aabb_scale - 1):
        raise SceneError(f"{source}: aabb_scale must be a power of two, got {scene.aabb_scale}")
    scene.aabb = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    scene.scale = float(meta.get("scale", 0.33))
    scene.offset = tuple(float(v) for v in meta.get("offset", (0.5, 0.5, 0.5)))
    scene.poses[:, :3, 3] = scene.poses[:, :3, 3] * scene.scale + torch.tensor(scene.offset)
    return scene


def composite_on(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """uint8 RGBA [..., 4] (or RGB) -> float RGB [..., 3] in [0, 1] over a background [..., 3]."""
    rgb = images[..., :3].float() / 255
    if images.shape[-1] == 3:
        return rgb
    alpha = images[..., 3:].float() / 255
    return rgb * alpha + background * (1 - alpha)
