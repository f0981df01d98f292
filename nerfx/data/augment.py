"""Training-time augmentations of image batches, and which ones a dataset allows.

DeiT's (Touvron et al. 2021) random resized crop and flips, on a whole batch at once: each image
gets its own crop box and flips, folded into one affine map and resampled bilinearly
(`F.grid_sample`), seeded by a torch.Generator so a run repeats.

Flips depend on the data: every `shapes` class is mirror-symmetric and drawn at any rotation, so
both flips keep the class; CIFAR-10's classes keep it under a left-right flip only; a digit does
not keep it under either (a flipped 2 is no digit, 6 and 9 swap under both), so MNIST and image
folders (which may hold digits or text) are never flipped.

    augment = augmentation_for("shapes", crop_scale=(0.5, 1.0))
    images = augment(images, generator)        # [B, C, H, W] -> [B, C, H, W]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nerfx.data.image_specs import ImageSpec, parse_image_spec

__all__ = ["Augmentation", "allowed_flips", "augmentation_for"]

# (left-right, up-down) flips that keep the class, per dataset kind (see the module's note).
FLIPS = {"shapes": (True, True), "cifar10": (True, False), "mnist": (False, False),
         "folder": (False, False)}


@dataclass(frozen=True)
class Augmentation:
    """Random resized crop (area fraction in crop_scale, aspect ratio in crop_ratio, resampled to
    the input size) and flips, each flip with probability 1/2. The default does nothing."""

    crop_scale: tuple[float, float] = (1.0, 1.0)   # DeiT: (0.08, 1) on ImageNet
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # DeiT/torchvision's default
    flip_x: bool = False                           # left-right
    flip_y: bool = False                           # up-down

    @property
    def identity(self) -> bool:
        return self.crop_scale == (1.0, 1.0) and not (self.flip_x or self.flip_y)

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The random numbers [n, 5] of n images' crops and flips (on the CPU)."""
        return torch.rand(n, 5, generator=generator)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 draws: torch.Tensor | None = None) -> torch.Tensor:
        """images [B, C, H, W] float -> augmented [B, C, H, W] (the input when identity), from
        draws [B, 5] (draw()'s) or new ones from generator."""
        if self.identity:
            return images
        b = images.shape[0]
        u = self.draw(b, generator) if draws is None else draws                 # [B, 5]
        lo, hi = self.crop_scale
        area = lo + (hi - lo) * u[:, 0]                                    # [B]
        log_lo, log_hi = math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1])
        ratio = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])           # width / height
        # The crop's sides as fractions of the image's (the ratio narrowed to [area, 1 / area],
        # so neither side exceeds the image: area 1 is the whole image) and its centre in
        # [-1, 1] image units, anywhere the box fits.
        ratio = torch.minimum(torch.maximum(ratio, area), 1 / area)
        sx, sy = (area * ratio).sqrt(), (area / ratio).sqrt()             # [B]
        cx, cy = (1 - sx) * (2 * u[:, 2] - 1), (1 - sy) * (2 * u[:, 3] - 1)
        # u[:, 4] in quarters: x only, y only, neither, both (independent flips when both are
        # allowed; each allowed flip has probability 1/2).
        flip_x = ((u[:, 4] < 0.25) | (u[:, 4] >= 0.75)) & self.flip_x             # [B]
        flip_y = (u[:, 4] >= 0.25) & ((u[:, 4] < 0.5) | (u[:, 4] >= 0.75)) & self.flip_y
        theta = torch.zeros(b, 2, 3)                                       # [B, 2, 3]
        theta[:, 0, 0] = torch.where(flip_x, -sx, sx)
        theta[:, 1, 1] = torch.where(flip_y, -sy, sy)
        theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        grid = F.affine_grid(theta.to(images.device), list(images.shape), align_corners=False)
        return F.grid_sample(images, grid.to(images.dtype), mode="bilinear",
                             padding_mode="border", align_corners=False)


def allowed_flips(spec: str | ImageSpec) -> tuple[bool, bool]:
    """(left-right, up-down): the flips that keep every class of the dataset a spec names."""
    spec = parse_image_spec(spec) if isinstance(spec, str) else spec
    return FLIPS[spec.kind]


def augmentation_for(spec: str | ImageSpec, crop_scale: tuple[float, float] = (1.0, 1.0),
                     flips: bool = True) -> Augmentation:
    """The crop given, with the flips the dataset allows (none when flips is False)."""
    flip_x, flip_y = allowed_flips(spec) if flips else (False, False)
    return Augmentation(crop_scale=(float(crop_scale[0]), float(crop_scale[1])),
                        flip_x=flip_x, flip_y=flip_y)
