"""The image datasets a spec names, as the command lines' --data takes them:

- `shapes`: built in, no download (nerfx.data.shapes).
- `mnist:PATH`, `cifar10:PATH`, `folder:PATH`: read from disk (nerfx.data.image_readers).

    data = load_image_dataset("cifar10:~/data/cifar", "train", size=32)   # an ImageDataset
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nerfx.data.image_datasets import (
    ImageDataError,
    ImageDataset,
    check_split,
    resize_dataset,
)
from nerfx.data.image_readers import load_cifar10, load_image_folder, load_mnist
from nerfx.data.shapes import load_shapes

__all__ = ["IMAGE_DATASETS", "ImageSpec", "load_image_dataset", "parse_image_spec"]

IMAGE_DATASETS = ("shapes", "mnist", "cifar10", "folder")


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
    check_split(split)
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

