"""The training-ray sampler: rays through random points of their pixels (Instant-NGP), or
through the centres; evaluation rays through the centres."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nerfx.cameras import image_rays, look_at, project
from nerfx.data.rays import TrainingRays
from nerfx.data.scenes import Scene

LENS = [0.05, -0.02, 0.0, 0.0, 0.003, -0.002, 0.0]  # k1, k2, k3, k4, p1, p2, is_fisheye


def coded_scene(lens: bool) -> Scene:
    """2 views of 6 x 5 pixels whose colour names the view, column and row."""
    n, h, w = 2, 5, 6
    view, row, col = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w),
                                    indexing="ij")
    images = torch.stack([col * 40, row * 50, view * 200], -1).to(torch.uint8)  # [n, h, w, 3]
    poses = torch.tensor(np.stack([look_at([4.0, 0.5, 1.0]), look_at([0.3, 4.0, 1.5])]),
                         dtype=torch.float32)
    camera = [5.0, 5.5, 3.1, 2.4] + (LENS if lens else [])
    return Scene(images, poses, torch.tensor([camera] * n), ["a", "b"])


def pixel_positions(scene: Scene, o, d, target):
    """Each ray's continuous pixel coordinates [m, 2] in the view its colour names."""
    view = (target[:, 2] * 255 / 200).round().long()
    positions = torch.empty(len(o), 2)
    for v in range(len(scene)):
        pick = view == v
        w2c = torch.linalg.inv(scene.poses[v])
        positions[pick] = project(o[pick] + d[pick], w2c, scene.intrinsics[v])[0]
    return positions


@pytest.mark.parametrize("lens", [False, True])
def test_training_rays_are_jittered_within_their_pixel(lens):
    scene = coded_scene(lens)
    rays = TrainingRays(scene, torch.device("cpu"))
    o, d, _, target = rays.sample(4000, torch.Generator().manual_seed(0))
    uv = pixel_positions(scene, o, d, target)  # [m, 2]
    col, row = (target[:, 0] * 255 / 40).round(), (target[:, 1] * 255 / 50).round()
    # The ray passes through the pixel whose colour it is trained on ...
    tol = 1e-4
    assert ((uv[:, 0] >= col - tol) & (uv[:, 0] <= col + 1 + tol)).all()
    assert ((uv[:, 1] >= row - tol) & (uv[:, 1] <= row + 1 + tol)).all()
    # ... at a uniformly random point of it: fractions cover [0, 1) evenly on both axes.
    frac = uv - torch.stack([col, row], -1)
    counts = torch.histc(frac.clamp(0, 1 - 1e-6), bins=4, min=0, max=1) / frac.numel()
    assert (counts - 0.25).abs().max() < 0.03, counts
    assert (frac[:, 0] - frac[:, 1]).abs().mean() > 0.2  # the two axes independent

    # Without jitter: every ray through its pixel's centre, from the same random stream.
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    o2, d2, _, target2 = rays.sample(500, g1, jitter=False)
    rays.sample(500, g2, jitter=True)
    assert torch.equal(g1.get_state(), g2.get_state())
    centre = pixel_positions(scene, o2, d2, target2)
    expected = torch.stack([(target2[:, 0] * 255 / 40).round(),
                            (target2[:, 1] * 255 / 50).round()], -1) + 0.5
    torch.testing.assert_close(centre, expected, atol=1e-4, rtol=0)


def test_evaluation_rays_pass_through_pixel_centres():
    scene = coded_scene(lens=True)
    o, d = image_rays(scene.poses[1], scene.intrinsics[1], scene.width, scene.height)
    uv = project(o + d, torch.linalg.inv(scene.poses[1]), scene.intrinsics[1])[0]
    rows, cols = torch.meshgrid(torch.arange(scene.height), torch.arange(scene.width),
                                indexing="ij")
    expected = torch.stack([cols.flatten(), rows.flatten()], -1).float() + 0.5
    torch.testing.assert_close(uv, expected, atol=1e-4, rtol=0)
