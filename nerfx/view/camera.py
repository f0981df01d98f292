"""The browser's camera as nerfx sees it, and back.

viser reports a camera as an orientation `wxyz` (camera to world), a `position`, a vertical field
of view `fov` (radians) and the canvas size in pixels, in OpenCV's camera frame (looks down +z,
+y down). nerfx's poses are camera-to-world [4, 4] in the OpenGL/NeRF frame (looks down -z, +y
up; nerfx.cameras): the two differ by a flip of the y and z axes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from nerfx.cameras import matrix_to_quaternion, quaternion_to_matrix

FLIP_YZ = np.diag([1.0, -1.0, -1.0])  # OpenCV camera axes <-> OpenGL camera axes


@dataclass(frozen=True)
class ViewCamera:
    """One browser camera: pose [4, 4] camera-to-world (OpenGL), vertical field of view in
    radians, and the canvas size in pixels."""

    pose: np.ndarray
    fov: float
    width: int
    height: int

    @classmethod
    def from_viser(cls, wxyz: np.ndarray, position: np.ndarray, fov: float, width: int,
                   height: int) -> ViewCamera:
        pose = np.eye(4)
        pose[:3, :3] = quaternion_to_matrix(wxyz) @ FLIP_YZ
        pose[:3, 3] = position
        return cls(pose, float(fov), max(int(width), 1), max(int(height), 1))

    def viser_wxyz(self) -> np.ndarray:
        return matrix_to_quaternion(self.pose[:3, :3] @ FLIP_YZ)

    def size_at(self, height: int) -> tuple[int, int]:
        """(width, height) of a frame `height` pixels tall with this canvas's aspect ratio."""
        height = max(1, min(int(height), self.height))
        return max(1, round(height * self.width / self.height)), height

    def intrinsics(self, width: int, height: int) -> torch.Tensor:
        """(fx, fy, cx, cy) of a width x height picture of this camera (square pixels)."""
        focal = height / 2 / math.tan(self.fov / 2)
        return torch.tensor([focal, focal, width / 2, height / 2], dtype=torch.float32)

    def transforms_json(self, width: int | None = None, height: int | None = None) -> str:
        """The pose as one frame of a transforms.json (NeRF-synthetic / Instant-NGP keys), for
        a picture of width x height pixels (default: the canvas)."""
        width, height = width or self.width, height or self.height
        focal = height / 2 / math.tan(self.fov / 2)
        frame = {"camera_angle_x": 2 * math.atan(width / 2 / focal),
                 "w": width, "h": height, "fl_x": focal, "fl_y": focal,
                 "cx": width / 2, "cy": height / 2,
                 "transform_matrix": [[round(float(v), 6) for v in row] for row in self.pose]}
        return json.dumps(frame)


def frustum_orientation(pose: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A training camera's OpenGL pose [4, 4] -> (viser wxyz, position) of its frustum."""
    pose = np.asarray(pose, dtype=np.float64)
    return matrix_to_quaternion(pose[:3, :3] @ FLIP_YZ), pose[:3, 3].copy()
