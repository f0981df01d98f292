"""Whole-image rendering helpers: chunked views, turntable cameras, depth pictures, videos."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch
from PIL import Image

from nerfx.cameras import turntable_poses
from nerfx.images import write_video
from nerfx.render import views
from nerfx.specs import Composited


class _Ball:
    """Renders a unit sphere at the origin analytically: red, opacity 1, depth to the hit."""

    def render(self, rays_o, rays_d, background=None):
        b = (rays_o * rays_d).sum(-1)
        disc = b * b - ((rays_o * rays_o).sum(-1) - 1)
        hit = disc > 0
        t = torch.where(hit, -b - disc.clamp(min=0).sqrt(), torch.zeros_like(b))
        opacity = hit.float()
        color = opacity[:, None] * torch.tensor([1.0, 0.0, 0.0])
        if background is not None:
            color = color + (1 - opacity)[:, None] * background
        return Composited(color, opacity, t * opacity, rays_o.new_zeros(0))


def test_render_view_is_the_same_in_any_chunk_size():
    pose = turntable_poses(1, 4.0, 20.0)[0]
    intrinsics = torch.tensor([30.0, 30.0, 11.5, 8.0])
    whole = views.render_view(_Ball(), pose, intrinsics, 23, 17, torch.ones(3), chunk=2**14)
    pieces = views.render_view(_Ball(), pose, intrinsics, 23, 17, torch.ones(3), chunk=7)
    for a, b in zip(whole, pieces, strict=True):
        assert torch.equal(a, b)
    rgb, depth, opacity = whole
    assert rgb.shape == (17, 23, 3) and depth.shape == opacity.shape == (17, 23)
    assert opacity[8, 11] == 1 and opacity[0, 0] == 0  # the ball is in the middle
    torch.testing.assert_close(depth[8, 11], torch.tensor(3.0), atol=0.05, rtol=0)


def test_turntable_circles_the_centre_and_looks_at_it():
    poses = turntable_poses(8, 3.0, 30.0, center=(0.5, -1.0, 0.0))
    assert poses.shape == (8, 4, 4)
    center = torch.tensor([0.5, -1.0, 0.0])
    offset = poses[:, :3, 3] - center
    torch.testing.assert_close(offset.norm(dim=-1), torch.full((8,), 3.0))
    torch.testing.assert_close(offset[:, 2], torch.full((8,), 1.5))  # 3 sin(30 degrees)
    look = -poses[:, :3, 2]  # the camera looks down its -z
    torch.testing.assert_close(look, -offset / 3.0, atol=1e-6, rtol=0)
    assert len({tuple(p.round(decimals=4).tolist()) for p in offset}) == 8
    with pytest.raises(ValueError, match="n_frames"):
        turntable_poses(0, 3.0)


def test_depth_picture_near_is_bright_and_empty_is_black():
    depth = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    opacity = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    picture = views.depth_picture(depth, opacity)
    assert picture.dtype == np.uint8
    assert picture[0, 0] > picture[0, 1] > picture[1, 0] > 0 and picture[1, 1] == 0
    assert not views.depth_picture(depth, torch.zeros(2, 2)).any()


def _frames():
    return [np.full((6, 9, 3), 40 * i, dtype=np.uint8) for i in range(4)]


def test_write_video_mp4(tmp_path):
    pytest.importorskip("imageio_ffmpeg", reason="the mp4 writer needs imageio-ffmpeg")
    path = write_video(_frames(), tmp_path / "spin")
    assert path.name == "spin.mp4" and path.stat().st_size > 0
    import imageio.v2 as imageio

    assert len(imageio.mimread(path)) == 4
    assert not list(tmp_path.glob("*.tmp*"))


def test_write_video_falls_back_to_gif(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_ffmpeg(name, *args, **kwargs):
        if name.startswith("imageio"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ffmpeg)
    path = write_video(_frames(), tmp_path / "spin")
    assert path.name == "spin.gif"
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (9, 6)
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "none")


def test_evaluate_views_scores_and_writes_the_pictures_asked_for(tmp_path):
    from nerfx.data.scenes import Scene
    from nerfx.metrics import psnr
    from nerfx.render.evaluate import evaluate_views, mean_scores

    poses = turntable_poses(2, 4.0, 20.0)
    images = torch.zeros(2, 9, 12, 4, dtype=torch.uint8)  # transparent: white on white
    scene = Scene(images, poses, torch.tensor([[20.0, 20.0, 6.0, 4.5]] * 2), ["a", "b"])
    seen = []
    scores = evaluate_views(_Ball(), scene, [1, 0], tmp_path,
                            files={"test": "vs_gt", "depth": "depth", "rgb": "rgb"},
                            on_view=seen.append)
    assert [s.view for s in scores] == [1, 0] and seen == scores
    rgb = views.render_view(_Ball(), poses[1], scene.intrinsics[1], 12, 9, torch.ones(3))[0]
    assert scores[0].psnr == pytest.approx(psnr(rgb, torch.ones(9, 12, 3)))
    assert mean_scores(scores)[0] == pytest.approx((scores[0].psnr + scores[1].psnr) / 2)
    with Image.open(tmp_path / "test_001.png") as img:
        assert img.size == (24, 9)  # the prediction beside the truth
    assert (tmp_path / "depth_000.png").is_file() and (tmp_path / "rgb_001.png").is_file()
    with pytest.raises(ValueError, match="unknown pictures"):
        evaluate_views(_Ball(), scene, [0], tmp_path, files={"x": "normals"})
