"""The KL-regularised autoencoder of latent diffusion (Rombach et al., 2022, "High-Resolution
Image Synthesis with Latent Diffusion Models", §3.1, App. G; official code:
CompVis/latent-diffusion, here "ldm/"), with its discriminator and losses
[ldm/models/autoencoder.py AutoencoderKL].

A convolutional encoder E maps x [B, 3, H, W] to a diagonal Gaussian over latents
z [B, z_ch, H/f, W/f] (f = 4 or 8), a decoder D maps z back. Loss, as
ldm/modules/losses/contperceptual.py LPIPSWithDiscriminator without its LPIPS and PatchGAN terms:
    nll = |x - D(z)| / exp(s) + s  (a learned scalar log-variance s),
    loss = Σ nll / B + kl_weight · Σ KL(q(z|x) || N(0, I)) / B,  kl_weight = 1e-6.
The paper adds a perceptual loss (LPIPS) and a patch-based adversarial loss. LPIPS needs
pretrained VGG weights, which cannot be fetched here: not available. The adversarial term is an
option (`PatchDiscriminator`, `hinge_d_loss`, `adaptive_weight`; the ldm trainer's
`adversarial_start` setting), off in every preset: it pays off only after the long training the
paper gives it (disc_start 50001). Without them reconstructions are blurrier than the paper's: an
L1 + KL autoencoder, stated as such. The residual, attention and resampling blocks are
nerfx.models.layers', shared with the U-Nets.

    ae = KLAutoencoder(AutoencoderConfig.kl_f4(resolution=32))
    out = ae.loss(x)                              # x [B, 3, 32, 32] in [-1, 1]
    z = ae.encode(x).sample()                     # [B, 3, 8, 8]
    x_hat = ae.decode(z)                          # [B, 3, 32, 32]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.models.layers import AttnBlock, Downsample, ResBlock, Upsample, group_norm

__all__ = ["AutoencoderConfig", "AutoencoderOutput", "Decoder", "DiagonalGaussian", "Encoder",
           "KLAutoencoder", "PatchDiscriminator", "adaptive_weight", "hinge_d_loss"]


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


def _attn(ch: int, c: AutoencoderConfig) -> nn.Module:
    """Single-head self-attention over the H*W positions [model.py AttnBlock]: the U-Nets'
    layers.AttnBlock."""
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
                layers.append(ResBlock(ch, c.ch * mult, c.dropout, c.num_groups))
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    layers.append(_attn(ch, c))
            if i != len(c.ch_mult) - 1:
                layers.append(Downsample(ch, with_conv=True))  # pad right/bottom, stride-2 conv
                res //= 2
        self.down = nn.Sequential(*layers)
        mid = [ResBlock(ch, ch, c.dropout, c.num_groups)]
        if c.mid_attn:
            mid.append(_attn(ch, c))
        mid.append(ResBlock(ch, ch, c.dropout, c.num_groups))
        self.mid = nn.Sequential(*mid)
        self.norm_out = group_norm(ch, c.num_groups)
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
        mid = [ResBlock(ch, ch, c.dropout, c.num_groups)]
        if c.mid_attn:
            mid.append(_attn(ch, c))
        mid.append(ResBlock(ch, ch, c.dropout, c.num_groups))
        self.mid = nn.Sequential(*mid)
        layers: list[nn.Module] = []
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):  # one more block per level going up
                layers.append(ResBlock(ch, c.ch * mult, c.dropout, c.num_groups))
                ch = c.ch * mult
                if res in c.attn_resolutions:
                    layers.append(_attn(ch, c))
            if i != 0:
                layers.append(Upsample(ch, with_conv=True))  # nearest x2, 3x3 conv
                res *= 2
        self.up = nn.Sequential(*layers)
        self.norm_out = group_norm(ch, c.num_groups)
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
