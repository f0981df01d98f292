"""Scene loading from folders the tests write: both formats, downscaling and the messy cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfx.data.scene_images import load_image
from nerfx.data.scenes import SceneError, composite_on, image_size, load_scene


def pose(z: float = 4.0) -> list[list[float]]:
    return [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z], [0, 0, 0, 1]]


def write_image(path: Path, size=(8, 6), mode="RGBA", value=200) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, (value,) * len(mode)).save(path)


def nerf_synthetic(root: Path, n=3, size=(8, 6)) -> Path:
    for split in ("train", "val", "test"):
        frames = []
        for i in range(n):
            write_image(root / split / f"r_{i}.png", size, value=10 * i)
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose(4.0 + i)})
        (root / f"transforms_{split}.json").write_text(
            json.dumps({"camera_angle_x": 0.6911, "frames": frames}))
    return root


def instant_ngp(root: Path, n=16, **meta) -> Path:
    frames = []
    for i in range(n):
        write_image(root / "images" / f"{i:03d}.jpg", (8, 6), mode="RGB")
        frames.append({"file_path": f"images/{i:03d}.jpg", "transform_matrix": pose(1.0)})
    body = {"fl_x": 10.0, "fl_y": 11.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6, "aabb_scale": 4,
            "frames": frames, **meta}
    (root / "transforms.json").write_text(json.dumps(body))
    return root


def test_nerf_synthetic_split_and_intrinsics(tmp_path):
    scene = load_scene(nerf_synthetic(tmp_path), "val")
    assert scene.images.dtype == torch.uint8 and scene.images.shape == (3, 6, 8, 4)
    focal = 0.5 * 8 / math.tan(0.5 * 0.6911)
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([focal, focal, 4.0, 3.0]))
    assert scene.poses[2, 2, 3] == 6.0 and scene.names[0] == "./val/r_0"


def test_downscale_scales_intrinsics(tmp_path):
    scene = load_scene(nerf_synthetic(tmp_path, size=(16, 12)), "train", downscale=2)
    full = load_scene(tmp_path, "train")
    assert scene.images.shape[1:3] == (6, 8)
    torch.testing.assert_close(scene.intrinsics, full.intrinsics / 2)


def test_instant_ngp_holds_out_every_eighth(tmp_path):
    root = instant_ngp(tmp_path)
    train, test = load_scene(root, "train"), load_scene(root, "test")
    assert len(train) == 14 and len(test) == 2
    assert test.names == ["images/000.jpg", "images/008.jpg"]
    torch.testing.assert_close(train.intrinsics[0], torch.tensor([10.0, 11.0, 4.0, 3.0]))
    assert train.aabb_scale == 4 and train.aabb == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    assert train.poses[0, 2, 3].item() == pytest.approx(1.0 * 0.33 + 0.5)  # scale and offset
    synthetic = load_scene(nerf_synthetic(tmp_path / "synthetic"), "train")
    assert synthetic.aabb == (-1.5,) * 3 + (1.5,) * 3


def test_instant_ngp_aabb_scale_must_be_a_power_of_two(tmp_path):
    with pytest.raises(SceneError, match="aabb_scale must be a power of two"):
        load_scene(instant_ngp(tmp_path, aabb_scale=3), "train")


def test_missing_images_are_skipped_and_counted(tmp_path):
    root = nerf_synthetic(tmp_path)
    (root / "train" / "r_1.png").unlink()
    with pytest.warns(UserWarning, match="skipped 1 missing image"):
        scene = load_scene(root, "train")
    assert len(scene) == 2
    for i in (0, 2):
        (root / "train" / f"r_{i}.png").unlink()
    with pytest.raises(SceneError, match="none of its 3 images exist"):
        load_scene(root, "train")


@pytest.mark.parametrize("damage,match", [
    ("corrupt", "cannot read the image"),
    ("malformed", "malformed JSON"),
    ("incomplete", "no 'frames' list"),
    ("singular", "not invertible"),
    ("escape", "leaves the scene folder"),
    ("no_matrix", "no 4x4 'transform_matrix'"),
])
def test_messy_folders_name_file_and_problem(tmp_path, damage, match):
    root = nerf_synthetic(tmp_path)
    source = root / "transforms_train.json"
    meta = json.loads(source.read_text())
    if damage == "corrupt":
        (root / "train" / "r_1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif damage == "malformed":
        source.write_text(source.read_text()[:-5])
    elif damage == "incomplete":
        source.write_text(json.dumps({"camera_angle_x": 0.69}))
    elif damage == "singular":
        meta["frames"][1]["transform_matrix"] = [[0] * 4] * 4
    elif damage == "escape":
        meta["frames"][0]["file_path"] = "../../../etc/passwd"
    elif damage == "no_matrix":
        del meta["frames"][2]["transform_matrix"]
    if damage in ("singular", "escape", "no_matrix"):
        source.write_text(json.dumps(meta))
    with pytest.raises(SceneError, match=match) as info:
        load_scene(root, "train")
    assert str(root) in str(info.value)


def test_distortion_is_read_not_refused(tmp_path):
    root = instant_ngp(tmp_path, k1=0.01)
    scene = load_scene(root, "train")
    assert scene.has_lens and scene.intrinsics.shape == (14, 11)
    torch.testing.assert_close(scene.intrinsics[0, 4:], torch.tensor([0.01] + [0.0] * 6))
    root2 = instant_ngp(tmp_path / "zero", k1=0.0, p1=0)  # explicit zeros: a pinhole
    scene2 = load_scene(root2, "train")
    assert len(scene2) == 14 and not scene2.has_lens and scene2.intrinsics.shape == (14, 4)


def test_pixel_sampling_is_read_and_checked(tmp_path):
    assert not load_scene(instant_ngp(tmp_path / "a"), "train").point_sampled  # areas by default
    assert load_scene(instant_ngp(tmp_path / "b", pixel_sampling="point"), "train").point_sampled
    with pytest.raises(SceneError, match="pixel_sampling"):
        load_scene(instant_ngp(tmp_path / "c", pixel_sampling="centre"), "train")


@pytest.mark.parametrize("downscale", [2, 3, 4, 6, 8])
@pytest.mark.parametrize("width, height", [(1000, 760), (1001, 757)])
def test_a_jpeg_read_small_matches_the_full_decode_box_filtered(tmp_path, downscale, width,
                                                                height):
    rng = np.random.default_rng(downscale)
    y, x = np.mgrid[0:height, 0:width]
    smooth = 127 + 60 * np.sin(x[..., None] / 40 + y[..., None] / np.array([30, 50, 70]))
    photo = (smooth + rng.normal(0, 4, smooth.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=92)
    small = load_image(tmp_path / "photo.jpg", downscale)
    size = (width // downscale, height // downscale)
    with Image.open(tmp_path / "photo.jpg") as img:
        full = np.asarray(img.convert("RGB").resize(size, Image.Resampling.BOX))
    assert small.shape == full.shape == (size[1], size[0], 3)
    if downscale == 3 or width % 2:       # nothing for libjpeg to reduce by: the same decode
        np.testing.assert_array_equal(small, full)
    assert np.abs(small.astype(float) - full).mean() < 1.0


def test_image_size_reads_headers_of_each_layout(tmp_path):
    from nerfx.data import room
    from tests.data.colmap_writer import room_as_colmap

    assert image_size(nerf_synthetic(tmp_path / "synthetic", size=(10, 7))) == (10, 7)
    assert image_size(instant_ngp(tmp_path / "ngp")) == (8, 6)
    capture = room_as_colmap(room.generate(24, root=tmp_path / "builtin", progress=False),
                             tmp_path / "colmap", binary=False, with_points=False)
    assert image_size(capture) == (24, 18)
    empty = instant_ngp(tmp_path / "gone")
    for image in (empty / "images").iterdir():
        image.unlink()
    with pytest.raises(SceneError, match="none of its frames"):
        image_size(empty)
    with pytest.raises(SceneError, match="no scene found"):
        image_size(tmp_path / "builtin")
    with pytest.raises(SceneError, match="no such scene folder"):
        image_size(tmp_path / "missing")


def test_not_a_scene(tmp_path):
    with pytest.raises(SceneError, match="no such scene folder"):
        load_scene(tmp_path / "nothing")
    with pytest.raises(SceneError, match="neither transforms_train.json"):
        load_scene(tmp_path)


def test_alpha_composited_on_background():
    rgba = torch.tensor([[[255, 0, 0, 255], [255, 0, 0, 0]]], dtype=torch.uint8)
    out = composite_on(rgba, torch.ones(3))
    torch.testing.assert_close(out, torch.tensor([[[1.0, 0, 0], [1.0, 1, 1]]]))
    assert np.allclose(composite_on(rgba[..., :3], torch.zeros(3)).numpy(), [[[1, 0, 0]] * 2])
