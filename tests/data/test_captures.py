"""transforms.json as real captures write it (Instant-NGP's colmap2nerf, nerfstudio, phone apps):
one test per variant, on folders the tests write."""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfx.data.scenes import SceneError, load_scene
from nerfx.render import OccupancyGrid


def pose(z: float = 4.0) -> list[list[float]]:
    return [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, z], [0, 0, 0, 1]]


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count), written by hand: Pillow
    writes 16-bit greyscale only."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    raw = b"".join(b"\x00" + pixels[row].astype(">u2").tobytes() for row in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def capture(root: Path, frames: list[dict], n_images: int = 3, size=(8, 6),
            name=lambda i: f"images/{i:03d}.jpg", **meta) -> Path:
    """A transforms.json with `frames` (merged into defaults) and its JPEG images."""
    body_frames = []
    for i in range(n_images):
        path = root / name(i)
        if path.suffix not in (".jpg", ".png"):  # a file_path without extension
            path = path.with_name(path.name + ".jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (20 * i, 100, 200)).save(path)
        frame = {"file_path": name(i), "transform_matrix": pose(1.0 + i)}
        frame.update(frames[i] if i < len(frames) else {})
        body_frames.append(frame)
    (root / "transforms.json").write_text(json.dumps({"frames": body_frames, **meta}))
    return root


SHARED = {"fl_x": 10.0, "fl_y": 11.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6}


def test_intrinsics_per_frame(tmp_path):
    frames = [{"fl_x": 10.0 + i, "fl_y": 12.0 + i, "cx": 3.5 + i, "cy": 2.5, "w": 8, "h": 6}
              for i in range(3)]
    scene = load_scene(capture(tmp_path, frames), "test", test_every=1)
    want = torch.tensor([[10.0 + i, 12.0 + i, 3.5 + i, 2.5] for i in range(3)])
    torch.testing.assert_close(scene.intrinsics, want)


def test_per_frame_intrinsics_override_the_shared_ones(tmp_path):
    frames = [{}, {"fl_x": 20.0, "cx": 5.0}, {"camera_angle_x": 1.0}]
    scene = load_scene(capture(tmp_path, frames, **SHARED), "test", test_every=1)
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([10.0, 11.0, 4.0, 3.0]))
    # A frame's own focal length replaces the shared one whole (Instant-NGP's
    # read_focal_length): fl_x alone serves both axes.
    torch.testing.assert_close(scene.intrinsics[1], torch.tensor([20.0, 20.0, 5.0, 3.0]))
    focal = 0.5 * 8 / math.tan(0.5)
    torch.testing.assert_close(scene.intrinsics[2], torch.tensor([focal, focal, 4.0, 3.0]))


def test_camera_angle_y_alone(tmp_path):
    scene = load_scene(capture(tmp_path, [], camera_angle_y=0.8), "test", test_every=1)
    focal = 0.5 * 6 / math.tan(0.4)  # from the height, for both axes
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([focal, focal, 4.0, 3.0]))


def test_fov_in_degrees(tmp_path):
    scene = load_scene(capture(tmp_path, [], x_fov=60.0), "test", test_every=1)
    focal = 0.5 * 8 / math.tan(math.radians(30.0))
    torch.testing.assert_close(scene.intrinsics[0], torch.tensor([focal, focal, 4.0, 3.0]))


def test_no_focal_length_names_the_file(tmp_path):
    root = capture(tmp_path, [], cx=4.0)
    with pytest.raises(SceneError, match="no focal length") as info:
        load_scene(root, "test", test_every=1)
    assert str(root / "transforms.json") in str(info.value)


def test_file_path_without_extension(tmp_path):
    root = capture(tmp_path, [], name=lambda i: f"images/frame_{i:03d}", **SHARED)
    scene = load_scene(root, "test", test_every=1)
    assert len(scene) == 3 and scene.names[0] == "images/frame_000"
    # A dotted name without an extension ("frame.0001") is found too.
    root2 = capture(tmp_path / "dotted", [], name=lambda i: f"frame.{i:04d}", **SHARED)
    assert (root2 / "frame.0001.jpg").is_file()
    assert len(load_scene(root2, "test", test_every=1)) == 3


def test_images_in_subfolders_and_windows_separators(tmp_path):
    root = capture(tmp_path, [], name=lambda i: f"cam{i % 2}/day/{i:03d}.jpg", **SHARED)
    frames = json.loads((root / "transforms.json").read_text())
    frames["frames"][2]["file_path"] = "cam0\\day\\002.jpg"  # written on Windows
    (root / "transforms.json").write_text(json.dumps(frames))
    scene = load_scene(root, "test", test_every=1)
    assert len(scene) == 3
    windows = scene.names.index("cam0\\day\\002.jpg")
    assert abs(int(scene.images[windows, 0, 0, 0]) - 40) <= 3  # that image, not another
    # Separators do not open a way out of the folder.
    frames["frames"][0]["file_path"] = "..\\..\\outside.jpg"
    (root / "transforms.json").write_text(json.dumps(frames))
    with pytest.raises(SceneError, match="leaves the scene folder"):
        load_scene(root, "test", test_every=1)


def test_jpeg(tmp_path):
    scene = load_scene(capture(tmp_path, [], **SHARED), "test", test_every=1)
    assert scene.images.shape == (3, 6, 8, 3) and scene.images.dtype == torch.uint8
    assert abs(int(scene.images[1, 3, 4, 0]) - 20) <= 3  # JPEG is lossy


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_16_bit_png(tmp_path, channels):
    rng = np.random.default_rng(channels)
    shape = (6, 8) if channels == 1 else (6, 8, channels)
    pixels = rng.integers(0, 65536, shape, dtype=np.uint16)
    frames = []
    for i in range(2):
        write_png16(tmp_path / "images" / f"{i}.png", pixels)
        frames.append({"file_path": f"images/{i}.png", "transform_matrix": pose(1.0)})
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": frames, **SHARED}))
    scene = load_scene(tmp_path, "test", test_every=1)
    high = (pixels >> 8).astype(np.uint8)  # 8 bits: the high byte, as Pillow reads RGB(A)
    image = scene.images[0].numpy()
    if channels == 1:
        assert image.shape == (6, 8, 3) and (image == high[..., None]).all()
    elif channels == 2:  # grey + alpha
        assert image.shape == (6, 8, 4) and (image[..., 0] == high[..., 0]).all()
        assert (image[..., 3] == high[..., 1]).all()
    else:
        assert image.shape == (6, 8, channels) and (image == high).all()


@pytest.mark.parametrize("aabb_scale,cascades", [(1, 1), (16, 5), (128, 8), (8.0, 4)])
def test_aabb_scale_up_to_128_with_its_cascades(tmp_path, aabb_scale, cascades):
    scene = load_scene(capture(tmp_path, [], aabb_scale=aabb_scale, **SHARED), "test",
                       test_every=1)
    assert scene.aabb_scale == int(aabb_scale) and scene.cascades == cascades
    grid = OccupancyGrid(scene.aabb, resolution=4, cascades=scene.cascades)
    # The outermost cascade reaches aabb_scale / 2 around the unit cube's centre: its last
    # cell's centre lies half a cell (of 4) inside that.
    last = grid.cell_points(torch.tensor([cascades * 4**3 - 1]), jitter=False)[0]
    torch.testing.assert_close(last, torch.full((3,), 0.5 + 0.5 * aabb_scale * 0.75))


@pytest.mark.parametrize("aabb_scale", [256, 3, 0, 2.5, "big"])
def test_aabb_scale_out_of_range_is_refused(tmp_path, aabb_scale):
    root = capture(tmp_path, [], aabb_scale=aabb_scale, **SHARED)
    with pytest.raises(SceneError, match="aabb_scale"):
        load_scene(root, "test", test_every=1)


def test_extra_keys_are_ignored(tmp_path):
    extra_meta = {"camera_model": "OPENCV", "sk_x": 0.0, "sk_y": 0.0, "up": [0, 0, 1],
                  "enable_depth_loading": False, "integer_depth_scale": 0.001,
                  "applied_transform": [[1, 0, 0, 0]] * 3, "ply_file_path": "sparse.ply",
                  "sharpness_discard_threshold": 0.0, "whatever": {"nested": [1, 2]}}
    extra_frame = [{"sharpness": 31.5, "colmap_im_id": i, "depth_path": f"depth/{i}.png",
                    "mask_path": None, "time": 0.1 * i} for i in range(3)]
    plain = load_scene(capture(tmp_path / "plain", [], **SHARED), "test", test_every=1)
    noisy = load_scene(capture(tmp_path / "noisy", extra_frame, **SHARED, **extra_meta), "test",
                       test_every=1)
    assert torch.equal(plain.images, noisy.images) and torch.equal(plain.poses, noisy.poses)
    assert torch.equal(plain.intrinsics, noisy.intrinsics)


def test_scale_and_offset_variants(tmp_path):
    scene = load_scene(capture(tmp_path, [], scale=0.5, offset=0.25, **SHARED), "test",
                       test_every=1)
    assert scene.offset == (0.25, 0.25, 0.25)  # a scalar offset serves every axis
    assert scene.poses[1, 2, 3].item() == pytest.approx(2.0 * 0.5 + 0.25)
    with pytest.raises(SceneError, match="scale must be a number"):
        load_scene(capture(tmp_path / "bad", [], scale="big", **SHARED), "test", test_every=1)


OPENCV = {"k1": -0.12, "k2": 0.03, "p1": 0.001, "p2": -0.002}
FISHEYE = {"k1": 0.02, "k2": -0.01, "k3": 0.003, "k4": -0.001, "is_fisheye": True}


def test_lens_shared_by_all_frames(tmp_path):
    scene = load_scene(capture(tmp_path, [], **SHARED, **OPENCV, k3=0.0), "test", test_every=1)
    assert scene.has_lens and scene.intrinsics.shape == (3, 11)
    want = torch.tensor([10.0, 11.0, 4.0, 3.0, -0.12, 0.03, 0.0, 0.0, 0.001, -0.002, 0.0])
    torch.testing.assert_close(scene.intrinsics, want.expand(3, 11))


def test_fisheye_lens(tmp_path):
    scene = load_scene(capture(tmp_path, [], **SHARED, **FISHEYE), "test", test_every=1)
    want = torch.tensor([10.0, 11.0, 4.0, 3.0, 0.02, -0.01, 0.003, -0.001, 0.0, 0.0, 1.0])
    torch.testing.assert_close(scene.intrinsics[0], want)
    # An equidistant fisheye with zero coefficients is still a fisheye, not a pinhole.
    plain = load_scene(capture(tmp_path / "zero", [], is_fisheye=True, k1=0.0, **SHARED),
                       "test", test_every=1)
    assert plain.has_lens and plain.intrinsics[0, 10] == 1.0


def test_lens_per_frame(tmp_path):
    """Per-frame keys override the shared ones key by key; frames without a lens get zeros."""
    frames = [{"k1": -0.2}, {"k1": 0.0, "p2": 0.0}, {"is_fisheye": True, "p1": 0, "p2": 0}]
    scene = load_scene(capture(tmp_path, frames, **SHARED, p2=0.004), "test", test_every=1)
    lens = scene.intrinsics[:, 4:]
    torch.testing.assert_close(lens[0], torch.tensor([-0.2, 0, 0, 0, 0, 0.004, 0]))
    torch.testing.assert_close(lens[1], torch.zeros(7))  # a pinhole in the wide layout
    torch.testing.assert_close(lens[2], torch.tensor([0, 0, 0, 0, 0, 0, 1.0]))
    # No frame with a lens: the narrow layout.
    narrow = load_scene(capture(tmp_path / "none", [{"k1": 0}], **SHARED), "test", test_every=1)
    assert narrow.intrinsics.shape == (3, 4)


def test_downscale_keeps_the_lens(tmp_path):
    root = capture(tmp_path, [], size=(16, 12), **{**SHARED, "w": 16, "h": 12}, **OPENCV)
    full = load_scene(root, "test", test_every=1)
    half = load_scene(root, "test", test_every=1, downscale=2)
    torch.testing.assert_close(half.intrinsics[:, :4], full.intrinsics[:, :4] / 2)
    torch.testing.assert_close(half.intrinsics[:, 4:], full.intrinsics[:, 4:])


@pytest.mark.parametrize("bad,match", [
    ({"k1": "strong"}, "k1 must be a number"),
    ({"k2": float("nan")}, "k2 must be finite"),
    ({"is_fisheye": "yes"}, "is_fisheye must be true or false"),
    ({"is_fisheye": True, "k1": 0.01, "p1": 0.002}, "no tangential terms"),
    ({"fl_x": -5.0}, "focal length must be positive"),
])
def test_bad_camera_values_name_file_and_frame(tmp_path, bad, match):
    root = capture(tmp_path, [{}, bad], **SHARED)  # json writes nan as NaN, which it reads
    with pytest.raises(SceneError, match=match) as info:
        load_scene(root, "test", test_every=1)
    assert str(root / "transforms.json") in str(info.value) and "frame 1" in str(info.value)
