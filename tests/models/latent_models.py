"""Tiny latent-diffusion models shared by the autoencoder and latent-diffusion tests."""

from __future__ import annotations

import torch

from nerfx.models.autoencoder import AutoencoderConfig, KLAutoencoder
from nerfx.models.ldm import LatentDiffusion, LDMConfig
from nerfx.models.unet import UNetConfig


def tiny_ae(**overrides) -> KLAutoencoder:
    torch.manual_seed(0)
    return KLAutoencoder(AutoencoderConfig.tiny(**{**dict(ch=8, num_groups=4), **overrides}))


def tiny_ldm(num_classes: int = 4, **overrides) -> LatentDiffusion:
    ae = tiny_ae()
    unet = UNetConfig.tiny(resolution=4, in_channels=3, out_channels=3, ch=16,
                           attn_resolutions=(4, 2), num_groups=4)
    return LatentDiffusion(ae, LDMConfig.tiny(num_classes, 4, 3, unet=unet, context_dim=8,
                                              head_channels=8, **overrides))
