"""The image models' dataset type (ViT, VAE, diffusion): images kept as uint8 [N, C, H, W] with
one label each, the error every image reader raises, and resizing.

`ImageDataset.as_float(value_range)` gives the float tensor a model wants ([-1, 1] for
diffusion, [0, 1] for the VAE). The sets themselves: nerfx.data.shapes (built in),
nerfx.data.image_readers (MNIST, CIFAR-10, image folders); nerfx.data.image_specs loads the one a
spec (`shapes`, `mnist:PATH`, ...) names.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["SPLITS", "ImageDataError", "ImageDataset", "check_split", "resize_dataset"]

SPLITS = ("train", "test")


def check_split(split: str) -> None:
    """Raises ValueError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


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

    def as_float(self, value_range: tuple[float, float] = (-1.0, 1.0),
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
            yield self.as_float(value_range, idx), self.labels[idx]


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

