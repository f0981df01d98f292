"""The built-in lego scene: deterministic, cameras aimed at the toy, depth from the ray caster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nerfx.data import lego
from nerfx.data.scenes import load_scene
from tests.helpers import folder_digest, requires_cuda


def test_generated_twice_byte_for_byte_and_loadable(tmp_path):
    a = lego.generate(12, root=tmp_path / "a", progress=False)
    b = lego.generate(12, root=tmp_path / "b", progress=False)
    assert folder_digest(a) == folder_digest(b)
    assert lego.generate(12, root=tmp_path / "a", progress=False) == a  # cached, not redone
    for split, n in lego.SPLIT_SIZES.items():
        scene = load_scene(a, split)
        assert len(scene) == n and scene.images.shape[1:] == (12, 12, 4)
    test = load_scene(a, "test")
    assert (test.images[..., 3] > 0).any() and (test.images[..., 3] == 0).any()
    # One ray per pixel centre: the scene says its pixels are point samples; downscaled, they
    # are averages again.
    assert test.point_sampled and not load_scene(a, "test", downscale=2).point_sampled


def test_a_folder_from_before_the_sampling_key_is_given_it(tmp_path):
    folder = lego.generate(4, root=tmp_path, progress=False)
    for split in lego.SPLIT_SIZES:
        path = folder / f"transforms_{split}.json"
        meta = json.loads(path.read_text())
        del meta["pixel_sampling"]
        path.write_text(json.dumps(meta))
    assert not load_scene(folder, "train").point_sampled
    assert lego.generate(4, root=tmp_path, progress=False) == folder
    assert all(load_scene(folder, split).point_sampled for split in lego.SPLIT_SIZES)


def test_cameras_look_at_the_toy_from_the_upper_hemisphere():
    for split in lego.SPLIT_SIZES:
        for pose in lego.camera_poses(split):
            position, forward = pose[:3, 3], -pose[:3, 2]
            assert abs(np.linalg.norm(position) - lego.RADIUS) < 1e-9
            assert position[2] > 0
            np.testing.assert_allclose(forward, -position / np.linalg.norm(position), atol=1e-9)


def test_depth_agrees_with_the_ray_caster():
    prims = lego.build_vehicle()
    pose = lego.camera_poses("val")[5]
    image, depth = lego.render_view(pose, 32, prims)
    hit = depth > 0
    assert hit.any()
    assert np.array_equal(hit, image[..., 3] == 255)
    # The hit point lies on the surface: just before it is empty space, just after is not.
    focal = 0.5 * 32 / np.tan(0.5 * lego.CAMERA_ANGLE_X)
    j, i = np.nonzero(hit)
    dirs = np.stack([(i + 0.5 - 16) / focal, -(j + 0.5 - 16) / focal, -np.ones_like(i)], -1)
    dirs = dirs @ pose[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    origins = np.broadcast_to(pose[:3, 3], dirs.shape)
    t = depth[hit]
    before = torch.from_numpy(origins + (t - 1e-3)[:, None] * dirs).float()
    _, alpha, t_again = lego.cast_rays(before, torch.from_numpy(dirs).float(), prims)
    assert (alpha == 1).all() and (t_again < 2e-3).all()


def test_shading_and_colours():
    prims = lego.build_vehicle()
    image, _ = lego.render_view(lego.camera_poses("test")[0], 48, prims)
    colours = {tuple(px // 32) for px in image[image[..., 3] == 255][:, :3]}
    assert len(colours) >= 5, "several brick colours and shades are visible"


@pytest.mark.cuda
@requires_cuda
def test_cuda_generation_matches_the_cpus(tmp_path):
    """The GPU casts the rays of a scene generated where torch sees one (the GPU preset's 400 px
    lego is 64M rays): its images match the CPU's but for rounding at a few silhouette pixels."""
    cpu = lego.generate(48, root=tmp_path / "cpu", progress=False, device="cpu")
    gpu = lego.generate(48, root=tmp_path / "gpu", progress=False, device="cuda")
    for split in ("train", "test"):
        a, b = (load_scene(f, split).images.float() / 255 for f in (cpu, gpu))  # uint8 RGBA
        differ = (a - b).abs().amax(-1) > 1.5 / 255
        assert differ.float().mean() < 1e-3 and (a - b).abs().mean() < 1e-3
