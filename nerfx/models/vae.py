"""Variational autoencoder (Kingma & Welling, 2013, "Auto-Encoding Variational Bayes").

Encoder q(z|x) = N(μ(x), diag σ²(x)); prior p(z) = N(0, I); decoder p(x|z) Bernoulli (for data in
[0, 1], as the paper's MNIST experiments) or Gaussian (App. C.2: mean and, unless fixed, a
per-pixel log-variance from the decoder). One reparameterised sample z = μ + σ ⊙ ε per example
(L = 1, §2.4) estimates the ELBO

    ELBO(x) = E_q[log p(x|z)] - β KL(q(z|x) || p(z)),
    KL = ½ Σ_j (μ_j² + σ_j² - 1 - log σ_j²)                                   [App. B]

with β = 1 the paper's bound and β ≠ 1 the β-VAE (Higgins et al., 2017). The paper's networks are
MLPs; here the encoder and decoder are small conv nets (stride-2 4x4 convolutions down, transposed
convolutions up), the common choice for images.

    vae = VAE(VAEConfig.mnist())
    out = vae.loss(x)              # x [B, 1, 28, 28] in [0, 1]; out.loss = -ELBO per example
    x = vae.sample(16, generator)  # [16, 1, 28, 28] decoder means
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VAE", "VAEConfig", "VAEOutput", "bernoulli_log_likelihood",
           "gaussian_kl", "gaussian_log_likelihood"]

LIKELIHOODS = ("bernoulli", "gaussian")
LOG_2PI = math.log(2 * math.pi)
MIN_LOGVAR = -8.0


@dataclass
class VAEConfig:
    resolution: int = 32
    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128)  # per stride-2 level; resolution / 2^levels left
    latent_dim: int = 32  # [K&W Fig. 2: 2 to 200 on MNIST]
    likelihood: str = "bernoulli"  # "bernoulli" (data in [0, 1]) or "gaussian"
    gaussian_std: float | None = None  # fixed decoder std; None: the decoder predicts log σ²
    beta: float = 1.0  # KL weight; 1 is the ELBO, > 1 the β-VAE

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"VAEConfig.likelihood must be one of {LIKELIHOODS}, got "
                             f"{self.likelihood!r}")
        levels = len(self.channels)
        if self.resolution % 2 ** levels:
            raise ValueError(f"VAEConfig: resolution {self.resolution} is not divisible by "
                             f"2^{levels} ({levels} stride-2 levels, channels={self.channels}); "
                             "use fewer levels or another size")

    @classmethod
    def mnist(cls, **overrides) -> VAEConfig:
        base = dict(resolution=28, in_channels=1, channels=(32, 64), latent_dim=20)
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, **overrides) -> VAEConfig:
        base = dict(resolution=16, in_channels=3, channels=(16, 32), latent_dim=8)
        return cls(**{**base, **overrides})


@dataclass
class VAEOutput:
    loss: Tensor  # scalar: mean over the batch of -ELBO with β (what to minimise)
    recon: Tensor  # [B] -log p(x|z), nats per image
    kl: Tensor  # [B] KL(q(z|x) || p(z)), nats per image
    elbo: Tensor  # [B] ELBO with β = 1 (the bound on log p(x)), nats per image
    mu: Tensor  # [B, latent]
    logvar: Tensor  # [B, latent]


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) || N(0, I)) [B] from μ, log σ² [B, d]                  [K&W App. B]"""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def bernoulli_log_likelihood(x: Tensor, logits: Tensor) -> Tensor:
    """Σ x log p + (1 - x) log(1 - p), p = sigmoid(logits) [B]              [K&W App. C.1]"""
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Σ log N(x; mean, exp(logvar)) [B]                                     [K&W App. C.2]"""
    ll = -0.5 * (LOG_2PI + logvar + (x - mean).pow(2) * torch.exp(-logvar))
    return ll.flatten(1).sum(1)


class VAE(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = c = config
        layers: list[nn.Module] = []
        ch = c.in_channels
        for out in c.channels:  # [B, ch, s, s] -> [B, out, s/2, s/2]
            layers += [nn.Conv2d(ch, out, 4, stride=2, padding=1), nn.SiLU()]
            ch = out
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        self.bottom = c.resolution // 2 ** len(c.channels)  # spatial side at the bottom
        flat = ch * self.bottom ** 2
        self.to_stats = nn.Linear(flat, 2 * c.latent_dim)  # -> (μ, log σ²)
        self.from_latent = nn.Linear(c.latent_dim, flat)
        layers = []
        for out in reversed((c.channels[0],) + tuple(c.channels[:-1])):
            layers += [nn.SiLU(), nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1)]
            ch = out
        out_ch = c.in_channels * (2 if c.likelihood == "gaussian" and c.gaussian_std is None
                                  else 1)
        self.decoder = nn.Sequential(*layers, nn.SiLU(), nn.Conv2d(ch, out_ch, 3, padding=1))

    def _check(self, x: Tensor) -> None:
        c = self.config
        if x.dim() != 4 or x.shape[1:] != (c.in_channels, c.resolution, c.resolution):
            raise ValueError(f"VAE expects [B, {c.in_channels}, {c.resolution}, {c.resolution}] "
                             f"images (the size it was built for), got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, C, R, R] -> μ, log σ² [B, latent]"""
        self._check(x)
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, noise: Tensor | None = None,
                       generator: torch.Generator | None = None) -> Tensor:
        """z = μ + σ ⊙ ε, ε ~ N(0, I): differentiable in μ and σ                     [K&W §2.4]"""
        if noise is None:
            noise = torch.randn(mu.shape, generator=generator,
                                device=generator.device if generator else mu.device).to(mu)
        return mu + torch.exp(0.5 * logvar) * noise

    def decode(self, z: Tensor) -> Tensor:
        """z [B, latent] -> decoder output [B, C or 2C, R, R]: Bernoulli logits, Gaussian means
        (and log-variances, the second C channels, unless gaussian_std is fixed)."""
        h = self.from_latent(z).view(z.shape[0], -1, self.bottom, self.bottom)
        return self.decoder(h)

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) [B] from the decoder output."""
        c = self.config
        if c.likelihood == "bernoulli":
            return bernoulli_log_likelihood(x, out)
        if c.gaussian_std is not None:
            logvar = torch.full_like(x, 2 * math.log(c.gaussian_std))
            return gaussian_log_likelihood(x, out, logvar)
        mean, logvar = out.chunk(2, dim=1)
        return gaussian_log_likelihood(x, mean, self.decoder_logvar(logvar))

    @staticmethod
    def decoder_logvar(raw: Tensor) -> Tensor:
        """The decoder's log σ², softly floored at MIN_LOGVAR (σ ≈ 0.018): constant pixels (MNIST's
        black background) would otherwise drive it to -inf."""
        return MIN_LOGVAR + F.softplus(raw - MIN_LOGVAR)

    def mean(self, out: Tensor) -> Tensor:
        """The decoder's mean image [B, C, R, R] from its output."""
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out[:, :self.config.in_channels]

    def loss(self, x: Tensor, noise: Tensor | None = None,
             generator: torch.Generator | None = None) -> VAEOutput:
        """-ELBO (with β) of a batch, one z sample per image                    [K&W eq. 10]"""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, noise, generator)
        recon = -self.log_likelihood(x, self.decode(z))
        kl = gaussian_kl(mu, logvar)
        loss = (recon + self.config.beta * kl).mean()
        return VAEOutput(loss=loss, recon=recon, kl=kl, elbo=-(recon + kl), mu=mu, logvar=logvar)

    def forward(self, x: Tensor) -> VAEOutput:
        return self.loss(x)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> Tensor:
        """n decoder means [n, C, R, R] from z ~ N(0, I)."""
        device = device or next(self.parameters()).device
        z = torch.randn((n, self.config.latent_dim), generator=generator,
                        device=generator.device if generator else device).to(device)
        return self.mean(self.decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the posterior means: x [B, C, R, R] -> [B, C, R, R]."""
        mu, _ = self.encode(x)
        return self.mean(self.decode(mu))

    @torch.no_grad()
    def interpolate(self, x_a: Tensor, x_b: Tensor, n: int) -> Tensor:
        """n decoder means [n, C, R, R] along the line between the posterior means of two
        images x_a, x_b [C, R, R] (or [1, C, R, R])."""
        c = self.config
        mu, _ = self.encode(torch.stack([x_a.reshape(c.in_channels, c.resolution, -1),
                                         x_b.reshape(c.in_channels, c.resolution, -1)]))
        w = torch.linspace(0, 1, n, device=mu.device, dtype=mu.dtype)[:, None]
        return self.mean(self.decode((1 - w) * mu[0] + w * mu[1]))
