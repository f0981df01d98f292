"""Image datasets (shapes, MNIST, CIFAR-10, folders) on files the tests write, good and broken;
and nerfx.images (uint8, grids, atomic PNG)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nerfx.data import ImageDataError, ImageSpec, load_image_dataset, make_shapes, parse_image_spec
from nerfx.data.image_readers import CIFAR10_CLASSES, load_cifar10, load_image_folder, load_mnist
from nerfx.data.shapes import SHAPE_CLASSES, load_shapes
from nerfx.images import make_grid, save_grid, to_uint8, write_png

# ---------------------------------------------------------------------------------------------
# spec strings


def test_parse_spec():
    assert parse_image_spec("shapes") == ImageSpec("shapes")
    assert parse_image_spec("mnist:/data/mnist") == ImageSpec("mnist", Path("/data/mnist"))
    assert parse_image_spec("CIFAR10:rel/dir").kind == "cifar10"
    assert str(parse_image_spec("folder:x")) == "folder:x"
    with pytest.raises(ImageDataError, match="unknown dataset 'imagenet'"):
        parse_image_spec("imagenet")
    with pytest.raises(ImageDataError, match="mnist needs a path"):
        parse_image_spec("mnist")
    with pytest.raises(ImageDataError, match="takes no path"):
        parse_image_spec("shapes:/x")


# ---------------------------------------------------------------------------------------------
# shapes


def test_shapes_deterministic_and_extendable():
    a, la = make_shapes(40, 24, seed=3)
    b, lb = make_shapes(40, 24, seed=3)
    c, lc = make_shapes(60, 24, seed=3)
    assert a.shape == (40, 3, 24, 24) and a.dtype == torch.uint8
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert torch.equal(a, c[:40]) and torch.equal(la, lc[:40])  # image i depends on (seed, i)
    d, _ = make_shapes(40, 24, seed=4)
    assert not torch.equal(a, d)


def test_shapes_same_pictures_at_any_resolution():
    small, ls = make_shapes(16, 16, seed=1)
    large, ll = make_shapes(16, 64, seed=1)
    assert torch.equal(ls, ll)
    down = torch.nn.functional.avg_pool2d(large.float(), 4)  # 64 -> 16 by box filtering
    # Box-filtered 64x64 vs rendered 16x16: same picture, differences only at edges.
    assert (down - small.float()).abs().mean() < 6.0


def test_shapes_classes_balanced_and_visible():
    images, labels = make_shapes(800, 32, seed=0)
    counts = torch.bincount(labels, minlength=len(SHAPE_CLASSES))
    assert counts.min() > 60  # 100 expected per class
    # The shape stands out: every image has pixels far from the background's median colour.
    flat = images.float().flatten(2)  # [n, 3, HW]
    dev = (flat - flat.median(-1, keepdim=True).values).norm(dim=1)  # [n, HW]
    assert (dev.max(-1).values > 60).all()


def test_shapes_splits_differ():
    train = load_shapes("train", size=16, n=50)
    test = load_shapes("test", size=16, n=50)
    assert train.name == "shapes/train" and train.classes == SHAPE_CLASSES
    assert not torch.equal(train.images, test.images)
    ds = load_image_dataset("shapes", "test", size=16, n=50)
    assert torch.equal(ds.images, test.images)


def test_dataset_as_float_and_batches():
    ds = load_shapes("train", size=8, n=10)
    x = ds.as_float((-1, 1))
    assert x.dtype == torch.float32 and x.min() >= -1 and x.max() <= 1
    assert torch.allclose((x + 1) * 127.5, ds.images.float(), atol=1e-4)
    g = torch.Generator().manual_seed(0)
    batches = list(ds.batches(4, g, value_range=(0, 1)))
    assert len(batches) == 2 and batches[0][0].shape == (4, 3, 8, 8)
    assert batches[0][0].min() >= 0
    g = torch.Generator().manual_seed(0)
    again = list(ds.batches(4, g, value_range=(0, 1)))
    assert torch.equal(batches[1][1], again[1][1])


# ---------------------------------------------------------------------------------------------
# MNIST


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I",
                                                                     *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(folder, n_train=6, n_test=4, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx(arr)
            if gz:
                name, data = name + ".gz", gzip.compress(data)
            (folder / name).write_bytes(data)
            files[(prefix, kind)] = (folder / name, arr)
    return files


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_mnist_reads_idx(tmp_path, gz):
    files = _write_mnist(tmp_path, gz=gz)
    ds = load_mnist(tmp_path, "train")
    assert ds.images.shape == (6, 1, 28, 28) and ds.classes[3] == "3"
    assert torch.equal(ds.images[:, 0], torch.from_numpy(files[("train", "images-idx3")][1]))
    assert torch.equal(ds.labels, torch.from_numpy(files[("train", "labels-idx1")][1]).long())
    test = load_image_dataset(f"mnist:{tmp_path}", "test", size=14)
    assert test.images.shape == (4, 1, 14, 14) and test.name == "mnist/test"


def test_mnist_torchvision_layout(tmp_path):
    _write_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_mnist(tmp_path, "test")) == 4


def test_mnist_missing_file(tmp_path):
    files = _write_mnist(tmp_path)
    files[("t10k", "labels-idx1")][0].unlink()
    with pytest.raises(ImageDataError, match="t10k-labels-idx1-ubyte: not found"):
        load_mnist(tmp_path, "test")
    with pytest.raises(ImageDataError, match="not found"):
        load_mnist(tmp_path / "nowhere", "train")


def test_mnist_truncated_and_bad_magic(tmp_path):
    files = _write_mnist(tmp_path)
    path = files[("train", "images-idx3")][0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ImageDataError, match="train-images-idx3-ubyte: truncated"):
        load_mnist(tmp_path, "train")
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 40)  # float idx
    with pytest.raises(ImageDataError, match="train-images-idx3-ubyte: not an idx file"):
        load_mnist(tmp_path, "train")


def test_mnist_corrupt_gzip(tmp_path):
    files = _write_mnist(tmp_path, gz=True)
    path = files[("train", "labels-idx1")][0]
    path.write_bytes(b"\x1f\x8b" + b"garbage" * 4)
    with pytest.raises(ImageDataError, match=r"train-labels-idx1-ubyte.gz: cannot be read"):
        load_mnist(tmp_path, "train")


def test_mnist_mislabelled(tmp_path):
    files = _write_mnist(tmp_path)
    path, labels = files[("train", "labels-idx1")]
    bad = labels.copy()
    bad[2] = 11
    path.write_bytes(_idx(bad))
    with pytest.raises(ImageDataError, match="train-labels-idx1-ubyte: label 11 at index 2"):
        load_mnist(tmp_path, "train")
    path.write_bytes(_idx(labels[:5]))  # one label short
    with pytest.raises(ImageDataError, match="5 labels for the 6 images"):
        load_mnist(tmp_path, "train")


def test_mnist_link_outside_refused(tmp_path):
    outside = tmp_path / "outside"
    files = _write_mnist(outside)
    inside = tmp_path / "mnist"
    _write_mnist(inside)
    target = files[("train", "images-idx3")][0]
    (inside / "train-images-idx3-ubyte").unlink()
    os.symlink(target, inside / "train-images-idx3-ubyte")
    with pytest.raises(ImageDataError, match="leads outside the dataset folder"):
        load_mnist(inside, "train")


# ---------------------------------------------------------------------------------------------
# CIFAR-10


def _write_cifar(folder, n=5, protocol=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = batch
    return batches


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reads_batches(tmp_path, protocol):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_cifar10(tmp_path, "train")  # finds the cifar-10-batches-py folder
    assert train.images.shape == (25, 3, 32, 32) and train.classes == CIFAR10_CLASSES
    first = batches["data_batch_1"]
    assert torch.equal(train.images[0], torch.from_numpy(first[b"data"][0].reshape(3, 32, 32)))
    assert train.labels[:5].tolist() == first[b"labels"]
    test = load_image_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", "test")
    assert len(test) == 5 and test.labels.tolist() == batches["test_batch"][b"labels"]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_refuses_objects(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(ImageDataError, match=r"test_batch: not a CIFAR-10 python batch .*"
                                             r"which a data file may not"):
        load_cifar10(tmp_path, "test")


def test_cifar_missing_corrupt_mislabelled(tmp_path):
    batches = _write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(ImageDataError, match="data_batch_3: not found"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "test_batch").write_bytes(b"\x80\x02}q\x00(X")  # truncated pickle
    with pytest.raises(ImageDataError, match="test_batch: not a CIFAR-10 python batch"):
        load_cifar10(tmp_path, "test")
    batch = dict(batches["test_batch"])
    batch[b"labels"] = batch[b"labels"][:-1] + [10]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ImageDataError, match="test_batch: label 10 at index 4"):
        load_cifar10(tmp_path, "test")
    batch[b"labels"] = batch[b"labels"][:3]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ImageDataError, match="one label per image"):
        load_cifar10(tmp_path, "test")
    batch = {**batches["test_batch"], b"data": np.zeros((5, 100), np.uint8)}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ImageDataError, match=r"test_batch: 'data' must be a uint8 array"):
        load_cifar10(tmp_path, "test")


# ---------------------------------------------------------------------------------------------
# image folders


def _write_folder(root, classes=("cat", "dog"), per_class=10, size=12, mode="RGB"):
    rng = np.random.default_rng(2)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                root / c / f"{i:03d}.png")


def test_folder_split_and_labels(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    train = load_image_folder(tmp_path, "train")
    test = load_image_folder(tmp_path, "test")
    assert train.classes == ("cat", "dog") and len(train) == 18 and len(test) == 2
    assert torch.bincount(test.labels).tolist() == [1, 1]
    # Held-out images are not in the training split.
    for img in test.images:
        assert not (train.images == img).flatten(1).all(1).any()
    # Labels follow the folders: the first cat file is cat.
    first = np.array(Image.open(tmp_path / "cat" / "000.png"))
    both = torch.cat([train.images, test.images])
    labels = torch.cat([train.labels, test.labels])
    hit = (both == torch.from_numpy(first).permute(2, 0, 1)).flatten(1).all(1)
    assert labels[hit].tolist() == [0]
    assert torch.equal(load_image_folder(tmp_path, "test").images, test.images)  # seeded


def test_folder_train_test_layout_and_resize(tmp_path):
    _write_folder(tmp_path / "train", per_class=3, size=20)
    _write_folder(tmp_path / "test", per_class=2, size=20, mode="L")
    ds = load_image_dataset(f"folder:{tmp_path}", "test", size=8)
    assert ds.images.shape == (4, 3, 8, 8)  # RGB: the training images are, so both splits
    first = load_image_dataset(f"folder:{tmp_path}", "test", size=8, n=3)
    assert torch.equal(first.images, ds.images[:3]) and torch.equal(first.labels, ds.labels[:3])
    _write_folder(tmp_path / "train", per_class=3, size=20, mode="L")
    grey = load_image_folder(tmp_path, "test")
    assert grey.images.shape == (4, 1, 20, 20)


def test_folder_errors(tmp_path):
    with pytest.raises(ImageDataError, match="not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match="no class subfolders"):
        load_image_folder(tmp_path / "empty")
    root = tmp_path / "data"
    _write_folder(root)
    (root / "bird").mkdir()
    with pytest.raises(ImageDataError, match="bird: class folder with no images"):
        load_image_folder(root)
    (root / "bird").rmdir()
    (root / "dog" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ImageDataError, match=r"dog/005.png: not a readable image"):
        load_image_folder(root)
    (root / "dog" / "005.png").unlink()
    Image.new("RGB", (12, 9)).save(root / "dog" / "007.png")
    with pytest.raises(ImageDataError, match=r"dog/007.png: 12x9 pixels.*pass a size"):
        load_image_folder(root, "train")
    assert load_image_folder(root, "train", size=6).images.shape[-2:] == (6, 6)


def test_folder_link_outside_refused(tmp_path):
    _write_folder(tmp_path / "elsewhere", classes=("x",), per_class=2)
    root = tmp_path / "data"
    _write_folder(root, per_class=2)
    os.symlink(tmp_path / "elsewhere" / "x", root / "x")
    with pytest.raises(ImageDataError, match="leads outside the dataset folder"):
        load_image_folder(root)


# ---------------------------------------------------------------------------------------------
# nerfx.images


def test_to_uint8():
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]
    assert to_uint8(torch.tensor([0.0, 0.5, 1.0]), (0, 1)).tolist() == [0, 128, 255]
    with pytest.raises(ValueError):
        to_uint8(x, (1, 1))


def test_make_grid_layout():
    images = torch.arange(5).float().view(5, 1, 1, 1).expand(5, 1, 2, 3)
    grid = make_grid(images, nrow=3, padding=1, pad_value=-1)
    assert grid.shape == (1, 2 * 3 + 1, 3 * 4 + 1)
    assert grid[0, 1, 1].item() == 0 and grid[0, 1, 5].item() == 1 and grid[0, 4, 1].item() == 3
    assert grid[0, 4, 9].item() == -1  # the sixth cell is empty
    assert grid[0, 0].eq(-1).all()


def test_save_grid_writes_png(tmp_path):
    images = torch.rand(6, 3, 8, 8) * 2 - 1
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=3, padding=0, min_side=8)
    back = np.asarray(Image.open(path))
    assert back.shape == (16, 24, 3)
    assert np.array_equal(back[:8, 8:16], to_uint8(images[1]).permute(1, 2, 0).numpy())
    # Small images are enlarged by whole pixels: 8 -> 24 for min_side 20 (x3).
    big = np.asarray(Image.open(save_grid(images, tmp_path / "big.png", nrow=3, padding=0,
                                          min_side=20)))
    assert big.shape == (48, 72, 3)
    assert np.array_equal(big[::3, ::3], back) and np.array_equal(big[2::3, 1::3], back)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["grid.png"]  # no temporary left
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would make it, not 0600
    grey = write_png(tmp_path / "g.png", torch.zeros(1, 4, 5, dtype=torch.uint8))
    assert np.asarray(Image.open(grey)).shape == (4, 5)
    with pytest.raises(ValueError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros((4, 4), np.float32))
