"""The training-ray sampler: random pixels over all training views, on the device.

Instant-NGP draws each training ray through a uniformly random point of the image, not a pixel
centre (src/testbed_nerf.cu, generate_training_samples_nerf: nerf_random_image_pos_training with
snap_to_pixel_centers off), and takes the colour of the pixel that point falls in: a random pixel
plus a uniform offset in [0, 1)^2 within it. Evaluation and rendering stay at pixel centres
(nerfx.cameras.image_rays).
"""

from __future__ import annotations

import torch

from nerfx.cameras import camera_rays
from nerfx.data.scenes import Scene, composite_on

__all__ = ["TrainingRays"]


class TrainingRays:
    """The training images on the device, drawn from as random pixels over all views."""

    def __init__(self, scene: Scene, device: torch.device):
        self.images = scene.images.to(device)  # [n, H, W, C] uint8
        self.poses = scene.poses.to(device)  # [n, 4, 4]
        self.intrinsics = scene.intrinsics.to(device)  # [n, 4] (or [n, 11] with the lens)
        self.n, self.h, self.w = len(scene), scene.height, scene.width

    def sample(self, n_rays: int, generator: torch.Generator, random_background: bool = True,
               jitter: bool = True) -> tuple[torch.Tensor, ...]:
        """-> (origins [n, 3], directions [n, 3], backgrounds [n, 3], targets [n, 3]): each
        pixel's colour composited on its own random background, as Instant-NGP trains (or on
        white, as NeRF trains on its synthetic scenes). jitter: each ray through a uniformly
        random point of its pixel (Instant-NGP), else through the pixel's centre (NeRF)."""
        device = self.images.device
        pick = torch.randint(0, self.n * self.h * self.w, (n_rays,), device=device,
                             generator=generator)
        cam, pix = pick // (self.h * self.w), pick % (self.h * self.w)
        row, col = pix // self.w, pix % self.w
        # Offsets from the pixel's centre in [-0.5, 0.5)^2 (camera_rays adds the 0.5), drawn
        # with or without jitter: the same random stream either way.
        offset = torch.rand(n_rays, 2, device=device, generator=generator) - 0.5  # [n, 2]
        if not jitter:
            offset = torch.zeros_like(offset)
        o, d = camera_rays(self.poses[cam], self.intrinsics[cam], col.float() + offset[:, 0],
                           row.float() + offset[:, 1])
        background = torch.rand(n_rays, 3, device=device, generator=generator)
        if not random_background:
            background = torch.ones_like(background)  # drawn anyway: the same RNG stream
        return o, d, background, composite_on(self.images[cam, row, col], background)
