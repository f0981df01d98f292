"""Latent diffusion (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"; official code: CompVis/latent-diffusion, here "ldm/").

Two stages:

1. A KL-regularised autoencoder [§3.1, App. G; ldm/models/autoencoder.py AutoencoderKL]: a
   convolutional encoder E maps x [B, 3, H, W] to a diagonal Gaussian over latents
   z [B, z_ch, H/f, W/f] (f = 4 or 8), a decoder D maps z back. Loss, as
   ldm/modules/losses/contperceptual.py LPIPSWithDiscriminator without its LPIPS and PatchGAN
   terms:   nll = |x - D(z)| / exp(s) + s  (a learned scalar log-variance s),
            loss = Σ nll / B + kl_weight · Σ KL(q(z|x) || N(0, I)) / B,  kl_weight = 1e-6.
   The paper adds a perceptual loss (LPIPS) and a patch-based adversarial loss. LPIPS needs
   pretrained VGG weights, which cannot be fetched here: not available. The adversarial term is
   an option (`PatchDiscriminator`, `hinge_d_loss`, `adaptive_weight`; the trainer's
   `adversarial_start` setting), off in every preset: it pays off only after the long training
   the paper gives it (disc_start 50001). Without them reconstructions are blurrier than the
   paper's: an L1 + KL autoencoder, stated as such.
2. A diffusion model on the latents, scaled to unit variance by the reciprocal of their standard
   deviation measured on the training set [App. G "scale_by_std"; ldm/models/diffusion/ddpm.py
   LatentDiffusion.on_train_batch_start]. The denoiser is nerfx's DDPM U-Net whose attention
   slots hold spatial transformers (self-attention, cross-attention to a context, feed-forward
   [§3.3, ldm/modules/attention.py SpatialTransformer]); the context is a learned embedding of
   the class label, one token [configs/latent-diffusion/cin-ldm-vq-f8.yaml: ClassEmbedder,
   conditioning_key crossattn]. Classifier-free guidance (Ho & Salimans, 2022): labels are
   replaced by a "null" class with probability p_uncond in training, and sampling uses
   ε̂ = ε̂(z, ∅) + s (ε̂(z, y) - ε̂(z, ∅)). DDPM or DDIM sampling run in latent space; the
   decoder makes the images at the end.

    ae = KLAutoencoder(AutoencoderConfig.kl_f4(resolution=32))
    out = ae.loss(x)                              # x [B, 3, 32, 32] in [-1, 1]
    ldm = LatentDiffusion(ae, LDMConfig.tiny(num_classes=8, latent_resolution=8, z_channels=3))
    ldm.set_scale_factor(ldm.measure_scale_factor(images))       # once, after stage 1
    loss = ldm.loss(x, labels, generator)         # stage 2 (the autoencoder frozen)
    images = ldm.sample(labels, guidance=3.0, steps=50)          # DDIM, decoded [B, 3, 32, 32]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion
from nerfx.models.layers import TransformerBlock
from nerfx.models.unet import AttnBlock, Downsample, UNet, UNetConfig, Upsample

__all__ = ["AutoencoderConfig", "AutoencoderOutput", "ClassifierFreeGuidance",
           "DiagonalGaussian", "KLAutoencoder", "LDMConfig", "LatentDiffusion", "LatentUNet",
           "PatchDiscriminator", "SpatialTransformer", "adaptive_weight", "class_grid_labels",
           "drop_labels", "hinge_d_loss", "latent_std"]


# ----------------------------------------------------------------------------------------------
# stage 1: the KL autoencoder


@dataclass
class AutoencoderConfig:
    resolution: int = 32  # image side
    in_channels: int = 3
    ch: int = 128  # base channels                [autoencoder_kl_64x64x3.yaml: ch 128]
    ch_mult: tuple[int, ...] = (1, 2, 4)  # f = 2^(levels-1)   [KL-f4: (1,2,4); f8: (1,2,4,4)]
    num_res_blocks: int = 2  # per level                [configs/autoencoder/*: 2]
    z_channels: int = 3  # latent channels              [KL-f4: 3 (64x64x3); KL-f8: 4]
    attn_resolutions: tuple[int, ...] = ()  # extra self-attention  [configs: [] ]
    mid_attn: bool = True  # block-attention-block in the middle  [model.py Encoder.mid]
    dropout: float = 0.0  # [configs: 0.0]
    num_groups: int = 32  # GroupNorm groups          [model.py Normalize: 32]
    kl_weight: float = 1e-6  # [autoencoder_kl_64x64x3.yaml lossconfig: kl_weight 1e-6]
    logvar_init: float = 0.0  # learned output log-variance s  [contperceptual.py: 0.0]

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        if self.resolution % self.factor:
            raise ValueError(f"AutoencoderConfig: resolution {self.resolution} is not divisible "
                             f"by the downsampling factor f = {self.factor} "
                             f"(ch_mult={self.ch_mult})")

    @property
    def factor(self) -> int:
        """f: image side / latent side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.factor

    @classmethod
    def kl_f4(cls, **overrides) -> AutoencoderConfig:
        """The paper's KL-f4: z 64x64x3 at 256² [autoencoder/autoencoder_kl_64x64x3.yaml]."""
        return cls(**overrides)

    @classmethod
    def kl_f8(cls, **overrides) -> AutoencoderConfig:
        """The paper's KL-f8: z 32x32x4 at 256² [autoencoder/autoencoder_kl_32x32x4.yaml]."""
        return cls(**{**dict(ch_mult=(1, 2, 4, 4), z_channels=4), **overrides})

    @classmethod
    def tiny(cls, **overrides) -> AutoencoderConfig:
        """A small f=4 autoencoder for tests and CPU runs."""
        base = dict(resolution=16, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, num_groups=8)
        return cls(**{**base, **overrides})


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-6)  # [model.py Normalize: eps 1e-6]


class ResnetBlock(nn.Module):
    """x [B, C_in, H, W] -> [B, C_out, H, W]: the autoencoder's residual block, without a time
    embedding [ldm/modules/diffusionmodules/model.py ResnetBlock, temb_channels=0]."""

    def __init__(self, c_in: int, c_out: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


def _attn(ch: int, c: AutoencoderConfig) -> nn.Module:
    """Single-head self-attention over the H*W positions [model.py AttnBlock]: the U-Net's."""
    return AttnBlock(ch, 1, c.num_groups)


class Encoder(nn.Module):
    """x [B, C, R, R] -> moments [B, 2 z_channels, R/f, R/f] (mean, log-variance)
    [model.py Encoder with double_z=True]."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        layers: list[nn.Module] = []
        ch, res = c.ch, c.resolution
        for i, mult in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                layers.append(ResnetBlock(ch, c.ch * mult, c.dropout, c.num_groups))
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    layers.append(_attn(ch, c))
            if i != len(c.ch_mult) - 1:
                layers.append(Downsample(ch, with_conv=True))  # pad right/bottom, stride-2 conv
                res //= 2
        self.down = nn.Sequential(*layers)
        mid = [ResnetBlock(ch, ch, c.dropout, c.num_groups)]
        if c.mid_attn:
            mid.append(_attn(ch, c))
        mid.append(ResnetBlock(ch, ch, c.dropout, c.num_groups))
        self.mid = nn.Sequential(*mid)
        self.norm_out = _norm(ch, c.num_groups)
        self.conv_out = nn.Conv2d(ch, 2 * c.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """z [B, z_channels, R/f, R/f] -> x̂ [B, C, R, R] [model.py Decoder]."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        ch = c.ch * c.ch_mult[-1]
        res = c.latent_resolution
        self.conv_in = nn.Conv2d(c.z_channels, ch, 3, padding=1)
        mid = [ResnetBlock(ch, ch, c.dropout, c.num_groups)]
        if c.mid_attn:
            mid.append(_attn(ch, c))
        mid.append(ResnetBlock(ch, ch, c.dropout, c.num_groups))
        self.mid = nn.Sequential(*mid)
        layers: list[nn.Module] = []
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):  # one more block per level going up
                layers.append(ResnetBlock(ch, c.ch * mult, c.dropout, c.num_groups))
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    layers.append(_attn(ch, c))
            if i != 0:
                layers.append(Upsample(ch, with_conv=True))  # nearest x2, 3x3 conv
                res *= 2
        self.up = nn.Sequential(*layers)
        self.norm_out = _norm(ch, c.num_groups)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """q(z|x) = N(mean, diag exp(logvar)) from moments [B, 2C, h, w]
    [ldm/modules/distributions/distributions.py DiagonalGaussianDistribution]."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)  # [B, C, h, w] each
        self.logvar = logvar.clamp(-30.0, 20.0)  # [distributions.py: clamp(-30, 20)]
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """z = mean + std ⊙ ε [B, C, h, w]; ε drawn on the generator's device, then moved."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator,
                                device=generator.device if generator else self.mean.device)
        return self.mean + self.std * noise.to(self.mean)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) [B], summed over latent elements [distributions.py kl()]."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum((1, 2, 3))


@dataclass
class AutoencoderOutput:
    loss: Tensor  # scalar: Σ nll / B + kl_weight Σ KL / B (what to minimise)
    nll: Tensor  # scalar: Σ nll / B (the adaptive adversarial weight balances against it)
    l1: Tensor  # scalar: mean |x - x̂| per pixel (the reconstruction error to report)
    kl: Tensor  # scalar: mean over the batch of KL(q(z|x) || N(0, I)), nats per image
    recon: Tensor  # [B, C, R, R] x̂ = D(z)


class KLAutoencoder(nn.Module):
    """AutoencoderKL [ldm/models/autoencoder.py]: encoder, 1x1 quant convs, decoder, and the
    learned scalar output log-variance of the reconstruction loss."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = c = config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        self.quant_conv = nn.Conv2d(2 * c.z_channels, 2 * c.z_channels, 1)  # [autoencoder.py]
        self.post_quant_conv = nn.Conv2d(c.z_channels, c.z_channels, 1)
        self.logvar = nn.Parameter(torch.tensor(c.logvar_init))  # [contperceptual.py]

    def _check(self, x: Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1:] != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"KLAutoencoder expects [B, {c.in_channels}, {c.resolution}, "
                             f"{c.resolution}] images (the size it was built for), got "
                             f"{tuple(x.shape)}")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """x [B, C, R, R] in [-1, 1] -> q(z|x) over [B, z_channels, R/f, R/f]."""
        self._check(x)
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """z [B, z_channels, R/f, R/f] -> x̂ [B, C, R, R] (unclamped)."""
        return self.decoder(self.post_quant_conv(z))

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             noise: Tensor | None = None) -> AutoencoderOutput:
        """The KL autoencoder's loss on a batch x [B, C, R, R] in [-1, 1], one posterior sample
        per image [contperceptual.py LPIPSWithDiscriminator.forward, optimizer_idx 0, with
        perceptual_weight 0 and no discriminator]."""
        posterior = self.encode(x)
        recon = self.decode(posterior.sample(generator, noise))
        l1 = (x - recon).abs()  # [B, C, R, R]
        nll = l1 / torch.exp(self.logvar) + self.logvar
        b = x.shape[0]
        kl = posterior.kl()
        nll_loss = nll.sum() / b
        loss = nll_loss + self.config.kl_weight * kl.sum() / b
        return AutoencoderOutput(loss=loss, nll=nll_loss, l1=l1.mean().detach(),
                                 kl=kl.mean().detach(), recon=recon)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """D(mean of q(z|x)) [B, C, R, R], clamped to [-1, 1]."""
        return self.decode(self.encode(x).mode()).clamp(-1.0, 1.0)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al., 2017) as the paper's autoencoder loss uses it [taming-transformers
    NLayerDiscriminator: ndf 64, n_layers 3, BatchNorm, LeakyReLU 0.2; init N(0, 0.02)]:
    x [B, C, R, R] -> one real/fake logit per patch [B, 1, r, r]. n_layers stride-2 4x4 convs,
    then two stride-1 ones; R must be at least 2^n_layers * 4 (use fewer layers for small R)."""

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # [taming discriminator/model.py weights_init]
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """½ (E[relu(1 - D(x))] + E[relu(1 + D(x̂))])           [taming losses/vqperceptual.py]"""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(nll_loss: Tensor, g_loss: Tensor, last_layer: Tensor,
                    disc_weight: float = 0.5) -> Tensor:
    """λ = disc_weight · ‖∇_L nll‖ / (‖∇_L g‖ + 1e-4), clamped to [0, 1e4], on the decoder's
    last layer L [contperceptual.py calculate_adaptive_weight; disc_weight 0.5 in the KL
    configs]. Both losses keep their graphs (retain_graph) for the backward that follows."""
    nll_grad = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = nll_grad.norm() / (g_grad.norm() + 1e-4)
    return disc_weight * weight.clamp(0.0, 1e4).detach()


# ----------------------------------------------------------------------------------------------
# stage 2: the class-conditional latent U-Net


class SpatialTransformer(AttnBlock):
    """x [B, C, H, W], context [B, M, context_dim] -> [B, C, H, W] [ldm/modules/attention.py
    SpatialTransformer]: GroupNorm, 1x1 conv in, `depth` transformer blocks (self-attention,
    cross-attention to the context, feed-forward; layers.TransformerBlock), 1x1 conv out
    initialised to zero (the block starts as the identity), residual.

    It takes the place of the U-Net's AttnBlock (a subclass, so UNet.forward hands it the
    context); it builds its own layers rather than AttnBlock's. The official feed-forward is
    GEGLU; layers.TransformerBlock's is GELU, same width ratio 4.
    """

    def __init__(self, ch: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32):
        nn.Module.__init__(self)  # not AttnBlock's layers: this block's own
        if ch % heads:
            raise ValueError(f"SpatialTransformer: {ch} channels not divisible by {heads} heads")
        self.norm = _norm(ch, groups)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.blocks = nn.ModuleList(TransformerBlock(ch, heads, cross_dim=context_dim, eps=1e-5)
                                    for _ in range(depth))
        self.proj_out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)  # [attention.py: zero_module(proj_out)]
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError("SpatialTransformer needs a context [B, M, context_dim]")
        b, c, h, w = x.shape
        seq = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        for block in self.blocks:
            seq = block(seq, context)
        return x + self.proj_out(seq.transpose(1, 2).reshape(b, c, h, w))


@dataclass
class LDMConfig:
    num_classes: int = 1000  # labels 0..n-1; label n is the "null" class
    context_dim: int = 512  # class embedding width    [cin-ldm-vq-f8.yaml: embed_dim 512]
    head_channels: int = 32  # channels per head        [cin-ldm-vq-f8.yaml: num_head_channels 32]
    transformer_depth: int = 1  # blocks per spatial transformer  [cin config: 1]
    p_uncond: float = 0.1  # label dropout for classifier-free guidance  [Ho & Salimans §4: 0.1]
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(
        # [cin-ldm-vq-f8.yaml: model_channels 256, channel_mult (1,2,4), num_res_blocks 2,
        #  attention at downsampling factors 4, 2, 1 of a 32x32 latent, i.e. 32, 16, 8]
        resolution=32, in_channels=4, out_channels=4, ch=256, ch_mult=(1, 2, 4),
        num_res_blocks=2, attn_resolutions=(32, 16, 8), dropout=0.0))
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        # T 1000, ε-prediction [cin config: timesteps 1000, parameterization eps]. Latents are
        # not bounded, so x̂_0 is not clipped. The official "linear" schedule is sqrt-spaced
        # 0.0015 -> 0.0155; GaussianDiffusion offers DDPM's linear 1e-4 -> 0.02, used here.
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
    and a learned class embedding as their one-token context.

    forward(z [B, z_ch, r, r], t [B], y [B] labels in 0..num_classes (num_classes: null))
    -> ε̂ [B, z_ch, r, r]."""

    def __init__(self, config: LDMConfig):
        unet = config.unet
        if unet.num_classes is not None or unet.context_dim is not None:
            raise ValueError("LDMConfig.unet: leave num_classes and context_dim unset; the "
                             "latent U-Net conditions through its spatial transformers")
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
        return super().forward(x, t, context=context)


def drop_labels(y: Tensor, p: float, null_label: int,
                generator: torch.Generator | None = None) -> Tensor:
    """Classifier-free guidance's training-time dropout [Ho & Salimans 2022, Algorithm 1]: each
    label y [B] becomes null_label with probability p (uniforms drawn on the generator's
    device)."""
    u = torch.rand(y.shape, generator=generator,
                   device=generator.device if generator else y.device).to(y.device)
    return torch.where(u < p, torch.full_like(y, null_label), y)


class ClassifierFreeGuidance:
    """A denoiser (z_t [B, ...], t [B], y [B]) -> guided output [B, ...]:
    ε̃ = ε(z, ∅) + s (ε(z, y) - ε(z, ∅))          [Ho & Salimans 2022, eq. 6 written with
    w = s - 1; LDM's scripts/sample_diffusion: unconditional_guidance_scale].
    s = 1 is the conditional model, s = 0 the unconditional one, s > 1 sharpens the class.
    The conditional and unconditional halves run as one batch of 2B."""

    def __init__(self, model: nn.Module, scale: float, null_label: int):
        self.model, self.scale, self.null_label = model, float(scale), null_label

    def __call__(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        null = torch.full_like(y, self.null_label)
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out.chunk(2)
        return uncond + self.scale * (cond - uncond)


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

