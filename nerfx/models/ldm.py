"""Latent diffusion (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"; official code: CompVis/latent-diffusion, here "ldm/").

Two stages:

1. A KL-regularised autoencoder [§3.1, App. G]: E maps x [B, 3, H, W] to a diagonal Gaussian
   over latents z [B, z_ch, H/f, W/f] (f = 4 or 8), D maps z back; an L1 + KL loss (the
   paper's LPIPS not available, its patch-adversarial term an option). nerfx.models.autoencoder
   holds it, its discriminator and its losses.
2. A diffusion model on the latents, scaled to unit variance by the reciprocal of their standard
   deviation measured on the training set [App. G "scale_by_std"; ldm/models/diffusion/ddpm.py
   LatentDiffusion.on_train_batch_start]. The denoiser is nerfx's DDPM U-Net whose attention
   slots hold spatial transformers (self-attention, cross-attention to a context, feed-forward
   [§3.3, ldm/modules/attention.py SpatialTransformer]); the context is a learned embedding of
   the class label, one token [configs/latent-diffusion/cin-ldm-vq-f8.yaml: ClassEmbedder,
   conditioning_key crossattn]; the spatial transformer is nerfx.models.layers'. Classifier-free
   guidance (Ho & Salimans, 2022; nerfx.models.guidance): labels are replaced by a "null" class
   with probability p_uncond in training, and sampling uses ε̂ = ε̂(z, ∅) + s (ε̂(z, y) - ε̂(z, ∅)).
   DDPM or DDIM sampling run in latent space; the decoder makes the images at the end.

    ae = KLAutoencoder(AutoencoderConfig.kl_f4(resolution=32))
    out = ae.loss(x)                              # x [B, 3, 32, 32] in [-1, 1]
    ldm = LatentDiffusion(ae, LDMConfig.tiny(num_classes=8, latent_resolution=8, z_channels=3))
    ldm.set_scale_factor(ldm.measure_scale_factor(images))       # once, after stage 1
    loss = ldm.loss(x, labels, generator)         # stage 2 (the autoencoder frozen)
    images = ldm.sample(labels, guidance=3.0, steps=50)          # DDIM, decoded [B, 3, 32, 32]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from nerfx.models.autoencoder import KLAutoencoder
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion
from nerfx.models.guidance import ClassifierFreeGuidance, drop_labels
from nerfx.models.layers import AttnBlock, SpatialTransformer
from nerfx.models.unet import UNet, UNetConfig

__all__ = ["LDMConfig", "LatentDiffusion", "LatentUNet", "class_grid_labels", "latent_std"]


@dataclass
class LDMConfig:
    num_classes: int = 1000  # labels 0..n-1; label n is the "null" class
    context_dim: int = 512  # class embedding width    [cin-ldm-vq-f8.yaml: embed_dim 512]
    head_channels: int = 32  # channels per head        [cin-ldm-vq-f8.yaml: num_head_channels 32]
    transformer_depth: int = 1  # blocks per spatial transformer  [cin config: 1]
    p_uncond: float = 0.1  # label dropout for classifier-free guidance  [Ho & Salimans §4: 0.1]
    label_in_time: bool = False  # also add a learned class embedding to the time embedding, so
    #   every residual block sees the class (as class-conditional DDPM/ADM U-Nets do); the
    #   paper's class-conditional model conditions by cross-attention alone [cin config]
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        # [cin-ldm-vq-f8.yaml: model_channels 256, channel_mult (1,2,4), num_res_blocks 2,
        #  attention at downsampling factors 4, 2, 1 of a 32x32 latent, i.e. 32, 16, 8]
        resolution=32, in_channels=4, out_channels=4, ch=256, ch_mult=(1, 2, 4),
        num_res_blocks=2, attn_resolutions=(32, 16, 8), dropout=0.0))
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        # T 1000, ε-prediction [cin config: timesteps 1000, parameterization eps]. Latents are
        # not bounded, so x̂_0 is not clipped. The paper names no β schedule; the official
        # configs use make_beta_schedule "linear", √β evenly spaced (schedule="scaled_linear"
        # here): β 0.0015 -> 0.0195 [cin-ldm-vq-f8.yaml], 0.0015 -> 0.0155 [the KL-f8
        # configs]; Stable Diffusion v1 0.00085 -> 0.012 [v1-inference.yaml]. The default here
        # is DDPM's linear 1e-4 -> 0.02 (the trainer's settings["diffusion"] picks another).
        clip_denoised=False))

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"LDMConfig.p_uncond must be in [0, 1), got {self.p_uncond}")
        if self.unet.in_channels != self.unet.out_channels:
            raise ValueError("LDMConfig: the latent U-Net predicts ε of its input: in_channels "
                             "must equal out_channels")

    @property
    def null_label(self) -> int:
        return self.num_classes

    @classmethod
    def tiny(cls, num_classes: int, latent_resolution: int, z_channels: int,
             **overrides) -> LDMConfig:
        """A small latent model for tests and CPU runs: a 2-level U-Net, 32 channels, spatial
        transformers at both levels (and the middle)."""
        unet = overrides.pop("unet", None) or UNetConfig.tiny(
            resolution=latent_resolution, in_channels=z_channels, out_channels=z_channels,
            attn_resolutions=(latent_resolution, latent_resolution // 2))
        return cls(num_classes=num_classes, context_dim=overrides.pop("context_dim", 64),
                   head_channels=overrides.pop("head_channels", 16), unet=unet, **overrides)


class LatentUNet(UNet):
    """nerfx's DDPM U-Net with a spatial transformer in every attention slot (down, middle, up)
    and a learned class embedding as their one-token context (with label_in_time, a second
    one added to the time embedding).

    forward(z [B, z_ch, r, r], t [B], y [B] labels in 0..num_classes (num_classes: null))
    -> ε̂ [B, z_ch, r, r]."""

    def __init__(self, config: LDMConfig):
        unet = config.unet
        if unet.num_classes is not None or unet.context_dim is not None:
            raise ValueError("LDMConfig.unet: leave num_classes and context_dim unset; the "
                             "latent U-Net conditions through its spatial transformers")
        if config.label_in_time:     # the U-Net's own label embedding, null label included
            unet = replace(unet, num_classes=config.num_classes)
        super().__init__(unet)
        self.ldm_config = config
        # [ldm/modules/encoders/modules.py ClassEmbedder: nn.Embedding(n_classes, embed_dim),
        #  the output [B, 1, embed_dim]]; one extra row for the null class.
        self.class_embed = nn.Embedding(config.num_classes + 1, config.context_dim)

        def swap(module: nn.Module) -> None:
            for name, child in module.named_children():
                if type(child) is AttnBlock:
                    ch = child.norm.num_channels
                    setattr(module, name, SpatialTransformer(
                        ch, max(1, ch // config.head_channels), config.context_dim,
                        config.transformer_depth, unet.num_groups))
                else:
                    swap(child)

        swap(self)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        if context is None:
            if y is None:
                raise ValueError("LatentUNet: pass class labels y [B] (num_classes for none)")
            context = self.class_embed(y)[:, None]  # [B, 1, context_dim]
        return super().forward(x, t, y=y if self.label_emb is not None else None,
                               context=context)


class LatentDiffusion(nn.Module):
    """The autoencoder, the latent U-Net and the latent scale factor, with training loss and
    sampling. `scale_factor` is a buffer (saved with the weights); 1 until measured."""

    def __init__(self, autoencoder: KLAutoencoder, config: LDMConfig):
        super().__init__()
        ae = autoencoder.config
        u = config.unet
        if (u.in_channels, u.resolution) != (ae.z_channels, ae.latent_resolution):
            raise ValueError(f"LDMConfig.unet takes [{u.in_channels}, {u.resolution}, "
                             f"{u.resolution}] latents but the autoencoder makes [{ae.z_channels}, "
                             f"{ae.latent_resolution}, {ae.latent_resolution}]")
        self.config = config
        self.autoencoder = autoencoder
        self.unet = LatentUNet(config)
        self.diffusion = GaussianDiffusion(config.diffusion)
        self.register_buffer("scale_factor", torch.tensor(1.0))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        ae = self.autoencoder.config
        return (ae.z_channels, ae.latent_resolution, ae.latent_resolution)

    @torch.no_grad()
    def measure_scale_factor(self, images: Tensor, chunk: int = 256,
                             generator: torch.Generator | None = None) -> float:
        """1 / std of posterior samples z ~ q(z|x) over images [N, C, R, R] in [-1, 1], all
        elements pooled [ldm/models/diffusion/ddpm.py: scale_by_std, on the first batch there;
        here on as many training images as given]."""
        device = self.scale_factor.device
        zs = [self.autoencoder.encode(images[i:i + chunk].to(device)).sample(generator).double()
              for i in range(0, len(images), chunk)]
        return float(1.0 / torch.cat(zs).flatten().std())

    def set_scale_factor(self, value: float) -> None:
        self.scale_factor.fill_(value)

    @torch.no_grad()
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x [B, C, R, R] -> scale_factor · z, z ~ q(z|x): [B, z_ch, R/f, R/f]."""
        return self.scale_factor * self.autoencoder.encode(x).sample(generator)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents [B, z_ch, r, r] -> images [B, C, R, R] clamped to [-1, 1]."""
        return self.autoencoder.decode(z / self.scale_factor).clamp(-1.0, 1.0)

    def loss(self, z0: Tensor, y: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The simple loss [DDPM eq. 14; LDM eq. 2] on scaled latents z0 [B, z_ch, r, r] with
        labels y [B], each dropped to the null class with probability p_uncond."""
        c = self.config
        y = drop_labels(y, c.p_uncond, c.null_label, generator)
        t = torch.randint(0, self.diffusion.num_timesteps, (z0.shape[0],), generator=generator,
                          device=generator.device if generator else z0.device).to(z0.device)
        noise = torch.randn(z0.shape, generator=generator,
                            device=generator.device if generator else z0.device).to(z0)
        return self.diffusion.loss(self.unet, z0, t, noise, model_kwargs={"y": y})

    def guided(self, scale: float, unet: nn.Module | None = None) -> ClassifierFreeGuidance:
        return ClassifierFreeGuidance(unet or self.unet, scale, self.config.null_label)

    @torch.no_grad()
    def sample_latents(self, labels: Tensor, guidance: float = 1.0, sampler: str = "ddim",
                       steps: int = 50, eta: float = 0.0,
                       generator: torch.Generator | None = None, unet: nn.Module | None = None,
                       progress: bool = False) -> Tensor:
        """Scaled latents [B, z_ch, r, r] for labels [B] (null_label: unconditional), by DDIM
        (steps, eta) or DDPM (all T steps), with classifier-free guidance scale `guidance`."""
        device = self.scale_factor.device
        labels = labels.to(device)
        shape = (labels.shape[0], *self.latent_shape)
        model = self.guided(guidance, unet)
        kwargs = {"y": labels}
        if sampler == "ddpm":
            return self.diffusion.sample(model, shape, generator, device, model_kwargs=kwargs,
                                         progress=progress)
        if sampler != "ddim":
            raise ValueError(f"unknown sampler {sampler!r}: use 'ddim' or 'ddpm'")
        ddim = DDIMSampler(self.diffusion, DDIMConfig(steps=steps, eta=eta))
        return ddim.sample(model, shape, generator, device, eta=eta, model_kwargs=kwargs,
                           progress=progress)

    @torch.no_grad()
    def sample(self, labels: Tensor, guidance: float = 1.0, sampler: str = "ddim",
               steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None,
               unet: nn.Module | None = None, progress: bool = False) -> Tensor:
        """Images [B, C, R, R] in [-1, 1] for labels [B]: latent sampling, then the decoder."""
        z = self.sample_latents(labels, guidance, sampler, steps, eta, generator, unet, progress)
        return self.decode(z)


def class_grid_labels(num_classes: int, per_class: int) -> Tensor:
    """[num_classes * per_class] labels, one row per class: 0,0,..,1,1,.. ."""
    return torch.arange(num_classes).repeat_interleave(per_class)


def latent_std(z: Tensor) -> float:
    """The pooled standard deviation of latents z [N, ...] (what the scale factor normalises)."""
    return float(z.double().flatten().std())

