"""Readers of image datasets on disk, each returning an ImageDataset:

- MNIST (or Fashion-MNIST): the four idx files (train-images-idx3-ubyte, ... , gzipped or not).
- CIFAR-10: the python batches (data_batch_1..5, test_batch), read by an unpickler that builds
  plain data only (dicts, lists, numbers, bytes, numpy uint8 arrays), never other objects.
- An image folder: one subfolder per class (PATH/<class>/*.png|jpg...), or PATH/train/<class>
  and PATH/test/<class>; without train/test, a seeded tenth of each class is held out as the
  test set.

Missing, corrupt or mislabelled files raise ImageDataError naming the file. Files are read only
inside the dataset folder: a link that leads outside it is refused.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from nerfx.data.image_datasets import ImageDataError, ImageDataset, check_split

__all__ = ["CIFAR10_CLASSES", "IMAGE_SUFFIXES", "load_cifar10", "load_image_folder",
           "load_mnist"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------
# files: staying inside the dataset folder


def _dataset_root(path: Path, what: str) -> Path:
    if not path.exists():
        raise ImageDataError(f"{path}: not found ({what} expected there)")
    if not path.is_dir():
        raise ImageDataError(f"{path}: not a folder ({what} expected there)")
    return path.resolve()


def _inside(root: Path, path: Path) -> Path:
    """path resolved, refused when it (or a link on the way) leads outside root."""
    real = path.resolve()
    if real != root and root not in real.parents:
        raise ImageDataError(f"{path}: leads outside the dataset folder {root} (a link?); "
                             "refusing to read it")
    return real


def _read_bytes(root: Path, path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz."""
    real = _inside(root, path)
    try:
        raw = real.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise ImageDataError(f"{path}: cannot be read ({exc})") from None
    return raw


# ----------------------------------------------------------------------------------------------
# MNIST


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find(root: Path, stem: str) -> Path:
    """root/stem, root/stem.gz, or the same under root/raw (torchvision's layout)."""
    tried = []
    for folder in (root, root / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            p = folder / name
            if p.is_file():
                return p
            tried.append(p.relative_to(root))
    raise ImageDataError(f"{root / stem}: not found (looked for {', '.join(map(str, tried))})")


def _read_idx(path: Path, raw: bytes, dims: int) -> np.ndarray:
    """An idx file of unsigned bytes with `dims` dimensions -> uint8 array."""
    if len(raw) < 4 + 4 * dims:
        raise ImageDataError(f"{path}: truncated ({len(raw)} bytes, no idx header)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != dims:
        raise ImageDataError(f"{path}: not an idx file of {dims}-d unsigned bytes (magic "
                             f"{raw[:4].hex()}, expected 000008{dims:02x})")
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    count = math.prod(shape)
    body = raw[4 + 4 * dims:]
    if len(body) != count:
        raise ImageDataError(f"{path}: {'truncated' if len(body) < count else 'trailing data'}"
                             f" ({len(body)} data bytes, the header {shape} says {count})")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_mnist(path: str | Path, split: str = "train") -> ImageDataset:
    """MNIST (or Fashion-MNIST, same files) from its idx files in `path`."""
    root = _dataset_root(Path(path), "MNIST's idx files")
    img_path, lbl_path = (_find(Path(path), stem) for stem in MNIST_FILES[split])
    images = _read_idx(img_path, _read_bytes(root, img_path), 3)
    labels = _read_idx(lbl_path, _read_bytes(root, lbl_path), 1)
    if len(images) != len(labels):
        raise ImageDataError(f"{lbl_path}: {len(labels)} labels for the {len(images)} images of "
                             f"{img_path.name}")
    if len(labels) and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise ImageDataError(f"{lbl_path}: label {labels[bad]} at index {bad} is not a digit")
    return ImageDataset(torch.from_numpy(images.copy())[:, None],
                        torch.from_numpy(labels.astype(np.int64)),
                        tuple(str(d) for d in range(10)), f"mnist/{split}")


# ----------------------------------------------------------------------------------------------
# CIFAR-10


CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}

# The only globals a CIFAR batch may name: numpy's array reconstruction (under numpy 1's and 2's
# module names). Everything else in the file must be plain pickle data.
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 pickles of bytes call (_codecs.encode), limited to latin-1 text."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("_codecs.encode with anything but latin-1 text")
    return text.encode("latin1")


class _PlainUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, numbers, strings, bytes and numpy arrays; nothing else."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refers to {module}.{name}, which a data file may not")


def _load_pickle(root: Path, path: Path) -> object:
    raw = _read_bytes(root, path)
    try:
        return _PlainUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # pickle raises many kinds on foreign or truncated data
        raise ImageDataError(f"{path}: not a CIFAR-10 python batch ({type(exc).__name__}: "
                             f"{exc})") from None


def _cifar_folder(path: Path) -> Path:
    for cand in (path, path / "cifar-10-batches-py"):
        if (cand / "test_batch").is_file() or (cand / "data_batch_1").is_file():
            return cand
    return path


def load_cifar10(path: str | Path, split: str = "train") -> ImageDataset:
    """CIFAR-10 from its python batches in `path` (or path/cifar-10-batches-py)."""
    folder = _cifar_folder(Path(path))
    root = _dataset_root(folder, "CIFAR-10's python batches")
    images, labels = [], []
    for name in CIFAR10_FILES[split]:
        file = folder / name
        if not file.is_file():
            raise ImageDataError(f"{file}: not found (CIFAR-10's python batches: "
                                 f"{', '.join(CIFAR10_FILES['train'] + CIFAR10_FILES['test'])})")
        batch = _load_pickle(root, file)
        if not isinstance(batch, dict):
            raise ImageDataError(f"{file}: holds a {type(batch).__name__}, not a CIFAR batch dict")
        data = batch.get(b"data", batch.get("data"))
        lbl = batch.get(b"labels", batch.get("labels"))
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != 3 * 32 * 32:
            desc = (f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                    else type(data).__name__)
            raise ImageDataError(f"{file}: 'data' must be a uint8 array [n, 3072], got {desc}")
        if not isinstance(lbl, list | tuple | np.ndarray) or len(lbl) != len(data):
            got = len(lbl) if hasattr(lbl, "__len__") else type(lbl).__name__
            raise ImageDataError(f"{file}: 'labels' must list one label per image "
                                 f"({len(data)} images, labels: {got})")
        lab = np.asarray(lbl)
        if lab.size and (lab.dtype.kind not in "iu" or lab.min() < 0 or lab.max() > 9):
            bad = next(i for i, v in enumerate(lbl)
                       if not isinstance(v, int | np.integer) or not 0 <= v <= 9)
            raise ImageDataError(f"{file}: label {lbl[bad]!r} at index {bad} is not a class "
                                 "index 0..9")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab.astype(np.int64))
    return ImageDataset(torch.from_numpy(np.concatenate(images)),
                        torch.from_numpy(np.concatenate(labels)), CIFAR10_CLASSES,
                        f"cifar10/{split}")


# ----------------------------------------------------------------------------------------------
# image folder


def _class_folders(root: Path, folder: Path) -> dict[str, list[Path]]:
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _inside(root, sub)
        files = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ImageDataError(f"{sub}: class folder with no images "
                                 f"({', '.join(IMAGE_SUFFIXES)})")
        classes[sub.name] = files
    if not classes:
        raise ImageDataError(f"{folder}: no class subfolders (expected {folder}/<class>/<images>)")
    return classes


def _read_image(root: Path, path: Path, size: int | None, mode: str) -> np.ndarray:
    """[H, W, C] uint8; centre-cropped to a square and resized when size is given."""
    real = _inside(root, path)
    try:
        with Image.open(real) as im:
            im.load()
            im = im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageDataError(f"{path}: not a readable image ({exc})") from None
    if size is not None:
        w, h = im.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        im = im.resize((size, size), Image.Resampling.BICUBIC, box=box)
    arr = np.asarray(im)
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_folder(path: str | Path, split: str = "train", size: int | None = None,
                      seed: int = 0, test_fraction: float = 0.1) -> ImageDataset:
    """An image folder with one subfolder per class (or train/ and test/ holding such folders).

    Images are RGB, or grayscale when every image of the folder (both splits) is; without size,
    all must share one square size (the error names the first that does not).
    """
    root = _dataset_root(Path(path), "a folder of class subfolders")
    check_split(split)
    given = Path(path)
    if (given / "train").is_dir() and (given / "test").is_dir():
        train, test = _class_folders(root, given / "train"), _class_folders(root, given / "test")
        if set(test) - set(train):
            raise ImageDataError(f"{given / 'test'}: classes {sorted(set(test) - set(train))} "
                                 f"are not in {given / 'train'}")
        classes = tuple(train)
        chosen = train if split == "train" else test
        files = [(f, classes.index(c)) for c, fs in chosen.items() for f in fs]
        every = [f for fs in (*train.values(), *test.values()) for f in fs]
    else:
        found = _class_folders(root, given)
        classes = tuple(found)
        every = [f for fs in found.values() for f in fs]
        files = []
        gen = torch.Generator().manual_seed(seed)
        for k, (_, fs) in enumerate(found.items()):
            order = torch.randperm(len(fs), generator=gen).tolist()
            n_test = int(round(len(fs) * test_fraction)) if len(fs) > 1 else 0
            n_test = min(max(n_test, 1 if len(fs) > 1 else 0), len(fs) - 1)
            keep = order[:n_test] if split == "test" else order[n_test:]
            files += [(fs[i], k) for i in sorted(keep)]
    if not files:
        raise ImageDataError(f"{given}: no {split} images")
    modes = set()  # one mode for both splits, so train and test images match
    for f in every:
        try:
            with Image.open(_inside(root, f)) as im:
                modes.add(im.mode)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise ImageDataError(f"{f}: not a readable image ({exc})") from None
    mode = "L" if modes <= {"L", "1", "I;16", "I", "F"} else "RGB"
    arrays = []
    for f, _ in files:
        arr = _read_image(root, f, size, mode)
        if arr.shape[0] != arr.shape[1] or (arrays and arr.shape != arrays[0].shape):
            raise ImageDataError(f"{f}: {arr.shape[1]}x{arr.shape[0]} pixels, unlike "
                                 + (f"{files[0][0]} ({arrays[0].shape[1]}x{arrays[0].shape[0]})"
                                    if arrays else "a square")
                                 + "; pass a size to crop and resize every image")
        arrays.append(arr)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([k for _, k in files], dtype=torch.int64)
    return ImageDataset(images, labels, classes, f"{given.name}/{split}")
