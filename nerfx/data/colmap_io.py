"""COLMAP's sparse model files, binary or text: cameras, registered images, 3D points.

The layouts are COLMAP's own (src/colmap/scene/reconstruction_io.cc; the Python reader
scripts/python/read_write_model.py):

    cameras.bin   uint64 n; per camera: int32 id, int32 model_id, uint64 width, uint64 height,
                  float64 params[count of the model]
    images.bin    uint64 n; per image: int32 id, float64 qw qx qy qz tx ty tz, int32 camera_id,
                  name (NUL-terminated), uint64 n_points2D, then (float64 x, y, int64 point3D_id)
                  per point
    points3D.bin  uint64 n; per point: uint64 id, float64 x y z, uint8 r g b, float64 error,
                  uint64 track_length, then (int32 image_id, int32 point2D_idx) per track entry

and the .txt files hold the same values, one camera or point a line, two lines an image (the
second, its 2D points, may be empty), `#` comments. All little-endian. (qw, qx, qy, qz, tx, ty, tz)
is the world-to-camera rotation and translation, camera axes as OpenCV's: x right, y down, z
ahead. A file cut short, or a line that does not parse, raises SceneError naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nerfx.data.scenes import SceneError

# COLMAP's camera models by id: (name, number of parameters) (src/colmap/sensor/models.h).
CAMERA_MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4),
                 3: ("RADIAL", 5), 4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8),
                 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
                 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
                 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16)}
PARAM_COUNT = dict(CAMERA_MODELS.values())


@dataclass
class Camera:
    model: str  # COLMAP's name, e.g. "OPENCV"
    width: int
    height: int
    params: tuple[float, ...]  # in COLMAP's order for the model


@dataclass
class RegisteredImage:
    name: str  # path under the images folder
    camera_id: int
    qvec: np.ndarray  # [4] float64 (qw, qx, qy, qz), world-to-camera rotation
    tvec: np.ndarray  # [3] float64, world-to-camera translation


@dataclass
class SparseModel:
    cameras: dict[int, Camera]
    images: dict[int, RegisteredImage]
    points: np.ndarray  # [N, 3] float64 world positions (N may be 0)
    folder: Path  # the folder holding the files
    binary: bool


class _Bytes:
    """A binary file read front to back; reading past its end is a SceneError."""

    def __init__(self, path: Path):
        self.path, self.data, self.at = path, path.read_bytes(), 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.at + size > len(self.data):
            raise SceneError(f"{self.path}: cut short ({len(self.data)} bytes) while reading "
                             f"{what} at byte {self.at}; the file is incomplete")
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += size
        return values

    def skip(self, size: int, what: str) -> None:
        if self.at + size > len(self.data):
            raise SceneError(f"{self.path}: cut short ({len(self.data)} bytes) while reading "
                             f"{what} at byte {self.at}; the file is incomplete")
        self.at += size

    def name(self, what: str) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0:
            raise SceneError(f"{self.path}: cut short in {what}; the file is incomplete")
        text = self.data[self.at:end].decode("utf-8", errors="replace")
        self.at = end + 1
        return text


def _model_name(model_id: int, path: Path, camera_id: int) -> str:
    if model_id not in CAMERA_MODELS:
        raise SceneError(f"{path}: camera {camera_id} has an unknown model id {model_id}")
    return CAMERA_MODELS[model_id][0]


def read_cameras_bin(path: Path) -> dict[int, Camera]:
    f = _Bytes(path)
    cameras = {}
    for _ in range(f.take("Q", "the camera count")[0]):
        camera_id, model_id, width, height = f.take("iiQQ", "a camera")
        name = _model_name(model_id, path, camera_id)
        params = f.take(f"{PARAM_COUNT[name]}d", f"camera {camera_id}'s parameters")
        cameras[camera_id] = Camera(name, int(width), int(height), tuple(params))
    return cameras


def read_images_bin(path: Path) -> dict[int, RegisteredImage]:
    f = _Bytes(path)
    images = {}
    for _ in range(f.take("Q", "the image count")[0]):
        image_id, *pose, camera_id = f.take("i7di", "an image's pose")
        name = f.name(f"image {image_id}'s name")
        n_points = f.take("Q", f"image {image_id}'s 2D point count")[0]
        f.skip(24 * n_points, f"image {image_id}'s 2D points")  # (float64 x, y, int64 id)
        images[image_id] = RegisteredImage(name, camera_id, np.array(pose[:4]),
                                           np.array(pose[4:]))
    return images


def read_points_bin(path: Path) -> np.ndarray:
    f = _Bytes(path)
    n = f.take("Q", "the point count")[0]
    points = np.empty((n, 3))
    for i in range(n):
        _, x, y, z, _, _, _, _, track = f.take("Q3d3BdQ", f"point {i}")
        f.skip(8 * track, f"point {i}'s track")  # (int32 image_id, int32 point2D_idx)
        points[i] = (x, y, z)
    return points


def _lines(path: Path) -> list[str]:
    """The file's lines without comments (blank lines kept: images.txt's may be empty)."""
    return [line.strip() for line in path.read_text().splitlines()
            if not line.lstrip().startswith("#")]


def _numbers(fields: list[str], path: Path, line: str, kind=float) -> list:
    try:
        return [kind(v) for v in fields]
    except ValueError:
        raise SceneError(f"{path}: cannot read the line {line[:80]!r}") from None


def read_cameras_txt(path: Path) -> dict[int, Camera]:
    cameras = {}
    for line in filter(None, _lines(path)):
        fields = line.split()
        if len(fields) < 4:
            raise SceneError(f"{path}: cannot read the line {line[:80]!r}")
        camera_id, width, height = _numbers([fields[0], *fields[2:4]], path, line, int)
        name = fields[1]
        if name not in PARAM_COUNT:
            raise SceneError(f"{path}: camera {camera_id} has an unknown model {name!r}")
        params = _numbers(fields[4:], path, line)
        if len(params) != PARAM_COUNT[name]:
            raise SceneError(f"{path}: camera {camera_id} ({name}) has {len(params)} "
                             f"parameters, the model has {PARAM_COUNT[name]}")
        cameras[camera_id] = Camera(name, width, height, tuple(params))
    return cameras


def read_images_txt(path: Path) -> dict[int, RegisteredImage]:
    lines = _lines(path)
    while lines and not lines[-1]:  # the file's end; a last image's empty points line
        lines.pop()
    images = {}
    for line in lines[::2]:  # each image's first line; its 2D points follow
        fields = line.split()
        if len(fields) < 10:
            raise SceneError(f"{path}: cannot read the image line {line[:80]!r}")
        image_id, camera_id = _numbers([fields[0], fields[8]], path, line, int)
        pose = _numbers(fields[1:8], path, line)
        name = " ".join(fields[9:])  # names may hold spaces
        images[image_id] = RegisteredImage(name, camera_id, np.array(pose[:4]),
                                           np.array(pose[4:]))
    return images


def read_points_txt(path: Path) -> np.ndarray:
    rows = [_numbers(line.split()[1:4], path, line) for line in filter(None, _lines(path))]
    return np.array(rows, dtype=np.float64).reshape(-1, 3)


def find_model(root: Path) -> Path | None:
    """The folder holding a sparse model under root: root/sparse/0, root/sparse or root."""
    for folder in (root / "sparse" / "0", root / "sparse", root):
        if any((folder / f"cameras{ext}").is_file() for ext in (".bin", ".txt")):
            return folder
    return None


def read_model(folder: Path) -> SparseModel:
    """cameras, images and (when present) points3D of a model folder, .bin before .txt."""
    binary = (folder / "cameras.bin").is_file()
    ext = ".bin" if binary else ".txt"
    readers = {".bin": (read_cameras_bin, read_images_bin, read_points_bin),
               ".txt": (read_cameras_txt, read_images_txt, read_points_txt)}[ext]
    for part in ("cameras", "images"):
        if not (folder / f"{part}{ext}").is_file():
            raise SceneError(f"{folder}: a COLMAP model needs {part}{ext} beside cameras{ext}")
    points_file = folder / f"points3D{ext}"
    points = readers[2](points_file) if points_file.is_file() else np.zeros((0, 3))
    return SparseModel(readers[0](folder / f"cameras{ext}"),
                       readers[1](folder / f"images{ext}"), points, folder, binary)
