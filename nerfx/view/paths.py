"""Camera paths: keyframes set in the page, interpolated (positions by Catmull-Rom splines,
orientations by spherical interpolation, field of view linearly), saved as a transforms.json-like
file and rendered to a video at full quality with nerfx.render's view renderer."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from nerfx.cameras import matrix_to_quaternion, quaternion_to_matrix
from nerfx.images import to_uint8, write_video
from nerfx.render.views import render_view
from nerfx.view.camera import ViewCamera

FLIP = np.diag([1.0, -1.0, -1.0])


def slerp(q0: np.ndarray, q1: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation of unit quaternions (the shorter way round)."""
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(dot)
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    """The centripetal-free (uniform) Catmull-Rom point between p1 and p2 at t in [0, 1]."""
    t2, t3 = t * t, t * t * t
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                  + (3 * p1 - p0 - 3 * p2 + p3) * t3)


def interpolate(keyframes: list[ViewCamera], n_frames: int) -> list[ViewCamera]:
    """n_frames cameras along the keyframes (the first and last included)."""
    if not keyframes:
        raise ValueError("a camera path needs at least one keyframe")
    if len(keyframes) == 1 or n_frames == 1:
        return [keyframes[0]] * n_frames
    positions = [k.pose[:3, 3] for k in keyframes]
    rotations = [matrix_to_quaternion(k.pose[:3, :3]) for k in keyframes]
    out = []
    segments = len(keyframes) - 1
    for i in range(n_frames):
        s = i / (n_frames - 1) * segments
        j = min(int(s), segments - 1)
        t = s - j
        p = catmull_rom(positions[max(j - 1, 0)], positions[j], positions[j + 1],
                        positions[min(j + 2, segments)], t)
        pose = np.eye(4)
        pose[:3, :3] = quaternion_to_matrix(slerp(rotations[j], rotations[j + 1], t))
        pose[:3, 3] = p
        fov = (1 - t) * keyframes[j].fov + t * keyframes[j + 1].fov
        out.append(ViewCamera(pose, fov, keyframes[0].width, keyframes[0].height))
    return out


def save_path(path: Path, keyframes: list[ViewCamera], fps: float, seconds: float) -> Path:
    """Writes the keyframes (transforms.json frames) and the timing, atomically."""
    value = {"fps": fps, "seconds": seconds,
             "keyframes": [json.loads(k.transforms_json()) | {"fov": k.fov} for k in keyframes]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)
    return path


def load_path(path: Path) -> tuple[list[ViewCamera], float, float]:
    """-> (keyframes, fps, seconds) of a file save_path wrote."""
    value = json.loads(Path(path).read_text())
    keyframes = [ViewCamera(np.asarray(k["transform_matrix"], dtype=np.float64), k["fov"],
                            k["w"], k["h"]) for k in value["keyframes"]]
    return keyframes, float(value["fps"]), float(value["seconds"])


@torch.no_grad()
def render_path(model, keyframes: list[ViewCamera], fps: float, seconds: float, stem: Path,
                height: int | None = None) -> Path:
    """Renders the path at full quality (every pixel; `height` rows, default the keyframes'
    canvas) on white and writes stem.mp4 (or .gif without imageio-ffmpeg)."""
    device = next(model.parameters()).device
    frames = []
    for camera in interpolate(keyframes, max(int(round(fps * seconds)), 1)):
        width, rows = camera.size_at(height or camera.height)
        rgb = render_view(model, torch.tensor(camera.pose, dtype=torch.float32, device=device),
                          camera.intrinsics(width, rows).to(device), width, rows,
                          torch.ones(3, device=device))[0]
        frames.append(to_uint8(rgb, (0.0, 1.0)))
    return write_video(frames, stem, fps=max(int(round(fps)), 1))
