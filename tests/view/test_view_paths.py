"""Camera paths: interpolation through the keyframes, the saved file, the rendered video."""

from __future__ import annotations

import math

import numpy as np

from nerfx.cameras import look_at
from nerfx.view.camera import ViewCamera
from nerfx.view.paths import interpolate, load_path, render_path, save_path
from tests.view.test_view_units import Sphere


def keyframes() -> list[ViewCamera]:
    return [ViewCamera(look_at((4 * math.cos(a), 4 * math.sin(a), 1.0)), 0.7 + 0.1 * i, 32, 24)
            for i, a in enumerate((0.0, 0.6, 1.2))]


def test_the_path_passes_through_its_keyframes_smoothly():
    keys = keyframes()
    path = interpolate(keys, 9)                         # keyframes at frames 0, 4 and 8
    for frame, key in zip((0, 4, 8), keys, strict=True):
        np.testing.assert_allclose(path[frame].pose, key.pose, atol=1e-9)
        assert math.isclose(path[frame].fov, key.fov)
    for camera in path:
        rotation = camera.pose[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-9)
        assert 3.9 < np.linalg.norm(camera.pose[:2, 3]) < 4.1   # near the circle, not a chord
    positions = np.stack([camera.pose[:3, 3] for camera in path])
    steps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    assert max(steps) < 2 * min(steps)                 # no jumps (the ends ease in and out)


def test_a_saved_path_loads_back(tmp_path):
    keys = keyframes()
    save_path(tmp_path / "camera_path.json", keys, 24, 2.0)
    loaded, fps, seconds = load_path(tmp_path / "camera_path.json")
    assert (fps, seconds) == (24, 2.0)
    for a, b in zip(loaded, keys, strict=True):
        np.testing.assert_allclose(a.pose, b.pose, atol=1e-6)
        assert (a.width, a.height, a.fov) == (b.width, b.height, b.fov)


def test_a_path_renders_to_a_video(tmp_path):
    model = Sphere()
    video = render_path(model, keyframes(), 4, 1.0, tmp_path / "path")
    assert video.stat().st_size > 0 and model.rays == 4 * 32 * 24
