"""Image classification datasets for the image models (ViT, VAE, diffusion).

- `shapes`: built in, no download. Coloured geometric shapes (circle, square, triangle, star,
  cross, ring, half-disc, arrow) on textured backgrounds (gradients, stripes, checks, waves),
  one label per image. Every image is drawn from a seed in resolution-independent coordinates
  and rendered with anti-aliased edges from signed distances, so the same seed gives the same
  picture at any size.
- `mnist:PATH`: the four idx files (train-images-idx3-ubyte, ... , gzipped or not).
- `cifar10:PATH`: the python batches (data_batch_1..5, test_batch), read by an unpickler that
  builds plain data only (dicts, lists, numbers, bytes, numpy uint8 arrays), never other objects.
- `folder:PATH`: one subfolder per class (PATH/<class>/*.png|jpg...), or PATH/train/<class> and
  PATH/test/<class>; without train/test, a seeded tenth of each class is held out as the test set.

Missing, corrupt or mislabelled files raise ImageDataError naming the file. Files are read only
inside the dataset folder: a link that leads outside it is refused.

A dataset keeps its images as uint8 [N, C, H, W]; `ImageDataset.float(value_range)` gives the
float tensor a model wants ([-1, 1] for diffusion, [0, 1] for the VAE).
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_DATASETS", "SHAPE_CLASSES", "ImageDataError", "ImageDataset", "ImageSpec",
    "load_cifar10", "load_image_dataset", "load_image_folder", "load_mnist", "load_shapes",
    "make_shapes", "parse_image_spec",
]

IMAGE_DATASETS = ("shapes", "mnist", "cifar10", "folder")
SPLITS = ("train", "test")
SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "ring", "half-disc", "arrow")
SHAPES_SIZES = {"train": 10000, "test": 2000}  # default number of `shapes` images per split
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageDataError(ValueError):
    """A dataset that cannot be read; the message names the file and the problem."""


@dataclass
class ImageDataset:
    images: torch.Tensor  # [N, C, H, W] uint8, C = 1 or 3
    labels: torch.Tensor  # [N] int64 in [0, len(classes))
    classes: tuple[str, ...]
    name: str = ""  # e.g. "shapes/train"

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def resolution(self) -> int:
        """The side of the (square) images."""
        return self.images.shape[-1]

    def float(self, value_range: tuple[float, float] = (-1.0, 1.0),
              index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """The images (or images[index]) as float32 [n, C, H, W] mapped onto value_range."""
        x = self.images if index is None else self.images[index]
        lo, hi = value_range
        return x.float() * ((hi - lo) / 255.0) + lo

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                value_range: tuple[float, float] = (-1.0, 1.0), drop_last: bool = True,
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (images [B, C, H, W] float, labels [B]) in a seeded random order."""
        order = torch.randperm(len(self), generator=generator)
        stop = len(self) - batch_size + 1 if drop_last else len(self)
        for i in range(0, max(stop, 0), batch_size):
            idx = order[i:i + batch_size]
            yield self.float(value_range, idx), self.labels[idx]


@dataclass(frozen=True)
class ImageSpec:
    kind: str  # one of IMAGE_DATASETS
    path: Path | None = None  # None for `shapes`

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"


def parse_image_spec(spec: str) -> ImageSpec:
    """`shapes`, `mnist:PATH`, `cifar10:PATH` or `folder:PATH` -> ImageSpec."""
    kind, sep, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in IMAGE_DATASETS:
        raise ImageDataError(f"unknown dataset {spec!r}: use shapes, mnist:PATH, cifar10:PATH "
                             "or folder:PATH")
    if kind == "shapes":
        if sep and path:
            raise ImageDataError(f"{spec!r}: the built-in shapes set takes no path")
        return ImageSpec("shapes")
    if not path.strip():
        raise ImageDataError(f"{spec!r}: {kind} needs a path, as in {kind}:PATH")
    return ImageSpec(kind, Path(path.strip()).expanduser())


def load_image_dataset(spec: str | ImageSpec, split: str = "train", size: int | None = None,
                       seed: int = 0, n: int | None = None) -> ImageDataset:
    """Loads a split of the dataset a spec names, resized to size x size when size is given.

    seed applies to `shapes` (which images) and to the folder split; n keeps the first n images
    of any split (of `shapes`: how many to draw); `shapes` defaults to 32 x 32 and SHAPES_SIZES
    images.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    spec = parse_image_spec(spec) if isinstance(spec, str) else spec
    if spec.kind == "shapes":
        return load_shapes(split, size=size or 32, n=n, seed=seed)
    assert spec.path is not None
    if spec.kind == "mnist":
        data = load_mnist(spec.path, split)
    elif spec.kind == "cifar10":
        data = load_cifar10(spec.path, split)
    else:
        data = load_image_folder(spec.path, split, size=size, seed=seed)
    if n is not None:
        data = ImageDataset(data.images[:n], data.labels[:n], data.classes, data.name)
    return resize_dataset(data, size) if size else data


def resize_dataset(data: ImageDataset, size: int) -> ImageDataset:
    """Resizes every image to size x size (antialiased bilinear); a no-op at the same size."""
    if data.images.shape[-2:] == (size, size):
        return data
    out = []
    for chunk in data.images.split(1024):
        x = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return ImageDataset(torch.cat(out), data.labels, data.classes, data.name)


# ----------------------------------------------------------------------------------------------
# shapes


def _shape_polygons() -> dict[str, np.ndarray]:
    """Vertices [V, 2] of the polygonal classes in the unit disc, counter-clockwise."""

    def regular(k: int, r: float = 1.0, phase: float = math.pi / 2) -> np.ndarray:
        a = phase + 2 * math.pi * np.arange(k) / k
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)

    star = np.empty((10, 2))
    star[0::2], star[1::2] = regular(5, 1.0), regular(5, 0.42, math.pi / 2 + math.pi / 5)
    w = 0.33
    cross = np.array([(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w),
                      (-1, w), (-1, -w), (-w, -w), (-w, -1)], dtype=np.float64) * 0.9
    arrow = np.array([(-0.95, -0.28), (0.15, -0.28), (0.15, -0.7), (0.95, 0.0), (0.15, 0.7),
                      (0.15, 0.28), (-0.95, 0.28)])
    shapes = {"square": regular(4, 0.95, math.pi / 4), "triangle": regular(3, 1.0),
              "star": star, "cross": cross, "arrow": arrow}
    return {k: v.astype(np.float32) for k, v in shapes.items()}


def _polygon_sdf(p: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Signed distance from points p [..., 2] to a closed polygon [V, 2] (negative inside).

    Inigo Quilez's exact polygon distance: the nearest edge gives the distance, the crossing
    number of a ray along +x gives the sign.
    """
    px, py = p[..., 0], p[..., 1]
    d = (px - verts[0, 0]) ** 2 + (py - verts[0, 1]) ** 2
    s = np.ones(px.shape, dtype=p.dtype)
    for i in range(len(verts)):
        (xi, yi), (xj, yj) = verts[i], verts[i - 1]
        ex, ey, wx, wy = xj - xi, yj - yi, px - xi, py - yi
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d = np.minimum(d, (wx - ex * h) ** 2 + (wy - ey * h) ** 2)
        c1, c2, c3 = py >= yi, py < yj, ex * wy > ey * wx
        s = np.where((c1 & c2 & c3) | (~c1 & ~c2 & ~c3), -s, s)
    return s * np.sqrt(d)


def _shape_sdf(name: str, p: np.ndarray) -> np.ndarray:
    """Distance [..., ] from points p [..., 2] in the shape's unit frame (radius about 1)."""
    r = np.sqrt((p ** 2).sum(-1))
    if name == "circle":
        return r - 1.0
    if name == "ring":
        return np.abs(r - 0.72) - 0.28
    if name == "half-disc":  # the disc's upper half, moved down to centre it
        q = p + np.array([0.0, 0.42], dtype=p.dtype)
        return np.maximum(np.sqrt((q ** 2).sum(-1)) - 1.0, -q[..., 1])
    return _polygon_sdf(p, _SHAPE_POLYGONS[name])


_SHAPE_POLYGONS = _shape_polygons()


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[n] each in [0, 1] -> [n, 3]."""
    k = (np.array([5.0, 3.0, 1.0]) + h[:, None] * 6.0) % 6.0
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n images (uint8 [n, 3, size, size]) and labels (int64 [n]) of the `shapes` set.

    Image i depends only on (seed, i), not on n or size: a larger n extends the set, and another
    size renders the same pictures at another resolution.
    """
    if n < 0 or size < 4:
        raise ValueError(f"make_shapes needs n >= 0 and size >= 4, got n={n}, size={size}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5BA9E5])))
    # Draw all parameters up front, so image i is the same whatever n is: take a fixed-width
    # block of random numbers per image.
    u = rng.random((n, 24)).astype(np.float32)
    labels = (u[:, 0] * len(SHAPE_CLASSES)).astype(np.int64)
    # Background: a texture mixing two colours of similar hue, muted; the shape: a saturated
    # colour whose hue sits away from the background's and whose brightness differs.
    bg_h = u[:, 1]
    bg_s, bg_v = 0.15 + 0.35 * u[:, 2], 0.35 + 0.45 * u[:, 3]
    bg_a = _hsv_to_rgb(bg_h, bg_s, bg_v)
    # The texture's second colour: near the first (a texture, not a second object).
    bg_b = _hsv_to_rgb((bg_h + 0.08 * (u[:, 4] - 0.5)) % 1.0, bg_s * (0.5 + 0.5 * u[:, 5]),
                       np.clip(bg_v + 0.3 * (u[:, 6] - 0.5), 0.0, 1.0))
    fg_h = (bg_h + 0.25 + 0.5 * u[:, 7]) % 1.0
    fg_v = np.where(bg_v > 0.57, 0.15 + 0.25 * u[:, 8], 0.8 + 0.2 * u[:, 8])
    fg = _hsv_to_rgb(fg_h, 0.65 + 0.35 * u[:, 9], fg_v)
    texture = (u[:, 10] * 4).astype(np.int64)  # 0 gradient, 1 stripes, 2 checks, 3 waves
    angle_bg = u[:, 11] * 2 * math.pi
    freq = 1.5 + 3.0 * u[:, 12]  # periods across the image
    phase = u[:, 13] * 2 * math.pi
    radius = 0.42 + 0.33 * u[:, 14]  # in units of half the image side
    rot = u[:, 15] * 2 * math.pi
    cx = (1.0 - radius) * (2 * u[:, 16] - 1) * 0.9
    cy = (1.0 - radius) * (2 * u[:, 17] - 1) * 0.9
    aspect = 0.85 + 0.3 * u[:, 18]

    # Pixel centres in [-1, 1], y up.
    t = ((np.arange(size) + 0.5) / size * 2 - 1).astype(np.float32)
    gx, gy = np.meshgrid(t, -t, indexing="xy")  # [size, size]
    pix = 2.0 / size
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    chunk = max(1, min(256, 2 ** 20 // (size * size)))  # at most about 4 MB per float array
    for start in range(0, n, chunk):
        sl = slice(start, min(start + chunk, n))
        m = sl.stop - sl.start
        x, y = gx[None], gy[None]  # [1, H, W]
        # Background texture: a mix weight in [0, 1] per pixel, each image its own kind.
        ca = np.cos(angle_bg[sl]).astype(np.float32)[:, None, None]
        sa = np.sin(angle_bg[sl]).astype(np.float32)[:, None, None]
        f = (math.pi * freq[sl]).astype(np.float32)[:, None, None]
        ph = phase[sl].astype(np.float32)[:, None, None]
        mix = np.empty((m, size, size), dtype=np.float32)
        for kind in range(4):
            s = texture[sl] == kind
            if not s.any():
                continue
            along = ca[s] * x + sa[s] * y  # [m_s, H, W]
            across = -sa[s] * x + ca[s] * y
            if kind == 0:  # linear gradient
                mix[s] = 0.5 + 0.5 * along / math.sqrt(2)
            elif kind == 1:  # stripes
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + ph[s])
            elif kind == 2:  # checks
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + ph[s]) * np.sin(f[s] * across)
            else:  # waves
                mix[s] = 0.5 + 0.5 * np.sin(f[s] * along + 1.5 * np.sin(math.pi * across) + ph[s])
        mix = mix[..., None]
        bg = bg_a[sl][:, None, None] * (1 - mix) + bg_b[sl][:, None, None] * mix  # [m, H, W, 3]
        # The shape, in its own frame: translate, rotate, scale (the distance scales back).
        px, py = x - cx[sl][:, None, None], y - cy[sl][:, None, None]
        cr, sr = np.cos(rot[sl])[:, None, None], np.sin(rot[sl])[:, None, None]
        r = radius[sl][:, None, None]
        a = aspect[sl][:, None, None]
        local = np.stack([(cr * px + sr * py) / (r * a), (-sr * px + cr * py) / r], -1)
        dist = np.empty((m, size, size), dtype=np.float32)
        for k, name in enumerate(SHAPE_CLASSES):
            sel = labels[sl] == k
            if sel.any():
                dist[sel] = _shape_sdf(name, local[sel])
        dist *= np.minimum(r, r * a)  # back to image units (conservative for stretched shapes)
        alpha = np.clip(0.5 - dist / pix, 0.0, 1.0)[..., None]  # pixel coverage
        rgb = bg * (1 - alpha) + fg[sl][:, None, None] * alpha
        images[sl] = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(labels))


def load_shapes(split: str = "train", size: int = 32, n: int | None = None,
                seed: int = 0) -> ImageDataset:
    """The built-in `shapes` set: train and test draw from different seeds, never overlapping."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n = SHAPES_SIZES[split] if n is None else n
    images, labels = make_shapes(n, size, seed=2 * seed + (split == "test"))
    return ImageDataset(images, labels, SHAPE_CLASSES, f"shapes/{split}")


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
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
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
