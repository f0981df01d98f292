"""Denoising diffusion implicit models (Song, Meng & Ermon, 2021): sampling a trained DDPM model
in S << T steps, deterministically at η = 0.

On a subsequence τ_1 < ... < τ_S of 0..T-1, a step from τ_i to τ_{i-1} (ᾱ of "τ_0" is 1) is
                                                                         [DDIM eq. 12]
    x_prev = sqrt(ᾱ_prev) x̂_0 + sqrt(1 - ᾱ_prev - σ²) ε̂ + σ z,
    σ = η sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) sqrt(1 - ᾱ_t / ᾱ_prev)           [DDIM eq. 16]

η = 1 with S = T is DDPM's ancestral sampler with σ² = β̃_t; η = 0 is an ODE solver whose steps can
be run backwards (inversion: image -> noise) and whose noises can be interpolated (slerp).

    sampler = DDIMSampler(diffusion, DDIMConfig(steps=50, eta=0.0))
    x = sampler.sample(model, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    z = sampler.invert(model, x)                              # x ≈ sampler.sample(..., noise=z)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from nerfx.models.ddpm import Denoiser, GaussianDiffusion, gaussian_noise, gaussian_noise_like

__all__ = ["DDIMConfig", "DDIMSampler", "ddim_timesteps", "slerp"]

SPACINGS = ("uniform", "quadratic")


@dataclass
class DDIMConfig:
    steps: int = 50  # S                          [DDIM Table 1: 10, 20, 50, 100 (and 1000)]
    eta: float = 0.0  # 0: deterministic (DDIM), 1: DDPM-like             [DDIM §4.1, Table 1]
    spacing: str = "uniform"  # "uniform" or "quadratic"      [DDIM App. D.2; official
    #                            runners/diffusion.py skip_type; quadratic used for CIFAR-10]
    clip_denoised: bool | None = None  # None: the diffusion config's clip_denoised

    def __post_init__(self) -> None:
        if self.spacing not in SPACINGS:
            raise ValueError(f"DDIMConfig.spacing must be one of {SPACINGS}, got "
                             f"{self.spacing!r}")
        if self.steps < 1:
            raise ValueError(f"DDIMConfig.steps must be >= 1, got {self.steps}")
        if self.eta < 0:
            raise ValueError(f"DDIMConfig.eta must be >= 0, got {self.eta}")


def ddim_timesteps(num_timesteps: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The ascending subsequence τ of 0..T-1 (official runners/diffusion.py sample_image):
    uniform: range(0, T, T // S); quadratic: (linspace(0, sqrt(0.8 T), S)²) as integers, without
    repeats (so possibly a step or two fewer than S)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"DDIM steps must be in [1, {num_timesteps}], got {steps}")
    if spacing == "uniform":
        seq = list(range(0, num_timesteps, num_timesteps // steps))[:steps]
    elif spacing == "quadratic":
        # The official list can repeat a step at the low end (int(0.33²) = int(0.1²) = 0);
        # a repeated step moves nowhere, so it is dropped: S = 50 of T = 1000 gives 49 steps.
        seq = sorted({int(s) for s in np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2})
    else:
        raise ValueError(f"unknown DDIM spacing {spacing!r}: use one of {SPACINGS}")
    return seq


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """Spherical interpolation between noises, per sample over all but the first dimension
    [DDIM §5.3, following White 2016]: keeps the interpolants at the norm Gaussian noise has."""
    a = torch.as_tensor(alpha, dtype=z0.dtype, device=z0.device)
    flat0, flat1 = z0.flatten(1), z1.flatten(1)
    cos = (flat0 * flat1).sum(1) / (flat0.norm(dim=1) * flat1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0)).view(-1, *([1] * (z0.dim() - 1)))
    sin = torch.sin(theta)
    if (sin.abs() < 1e-6).any():  # (anti)parallel: linear interpolation is as good
        return (1 - a) * z0 + a * z1
    return torch.sin((1 - a) * theta) / sin * z0 + torch.sin(a * theta) / sin * z1


class DDIMSampler:
    """DDIM sampling, inversion and interpolation on a GaussianDiffusion's schedule."""

    def __init__(self, diffusion: GaussianDiffusion, config: DDIMConfig | None = None):
        self.diffusion = diffusion
        self.config = c = config or DDIMConfig()
        self.timesteps = ddim_timesteps(diffusion.num_timesteps, c.steps, c.spacing)
        self.clip = diffusion.config.clip_denoised if c.clip_denoised is None else c.clip_denoised

    def _alpha_bar(self, t: int) -> float:
        return 1.0 if t < 0 else float(self.diffusion.alphas_cumprod[t])

    def sigma(self, t: int, t_prev: int, eta: float | None = None) -> float:
        """σ of the step t -> t_prev (t_prev = -1: to the data)            [DDIM eq. 16]"""
        eta = self.config.eta if eta is None else eta
        a, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
        return eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5

    def _predict(self, model: Denoiser, x: Tensor, t: int,
                 model_kwargs: dict | None) -> tuple[Tensor, Tensor]:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        out = model(x, tt, **(model_kwargs or {}))
        return self.diffusion.predict(out, x, tt, clip=self.clip)  # (x̂_0, ε̂)

    @torch.no_grad()
    def step(self, model: Denoiser, x: Tensor, t: int, t_prev: int, noise: Tensor | None = None,
             generator: torch.Generator | None = None, eta: float | None = None,
             model_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """x_t -> x_{t_prev}; returns (x_{t_prev}, x̂_0).                      [DDIM eq. 12]"""
        x0, eps = self._predict(model, x, t, model_kwargs)
        a_prev = self._alpha_bar(t_prev)
        sigma = self.sigma(t, t_prev, eta)
        x_prev = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
        if sigma > 0:
            z = noise if noise is not None else gaussian_noise_like(x, generator)
            x_prev = x_prev + sigma * z
        return x_prev, x0

    @torch.no_grad()
    def sample(self, model: Denoiser, shape: tuple[int, ...],
               generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               noise: Tensor | None = None, eta: float | None = None,
               model_kwargs: dict | None = None, progress: bool = False) -> Tensor:
        """x_T (noise, or drawn from generator) -> x_0 in S steps."""
        x = noise if noise is not None else gaussian_noise(shape, generator, device)
        seq = self.timesteps
        for i in tqdm(range(len(seq) - 1, -1, -1), disable=not progress, desc="ddim",
                      leave=False):
            t_prev = seq[i - 1] if i > 0 else -1
            x, _ = self.step(model, x, seq[i], t_prev, generator=generator, eta=eta,
                             model_kwargs=model_kwargs)
        return x

    @torch.no_grad()
    def invert(self, model: Denoiser, x0: Tensor, model_kwargs: dict | None = None,
               progress: bool = False) -> Tensor:
        """Deterministic encoding x_0 -> x_T: the η = 0 steps run forwards in time, each with
        the model's ε̂ at the current point (the usual first-order approximation of the ODE
        [DDIM §4.3, eq. 13]). Sampling from the result at η = 0 gives x_0 back closely."""
        x = x0
        seq = self.timesteps
        for i in tqdm(range(len(seq)), disable=not progress, desc="ddim-invert", leave=False):
            t = seq[i]
            t_prev = seq[i - 1] if i > 0 else -1
            a, a_prev = self._alpha_bar(t), self._alpha_bar(t_prev)
            # ε̂ at the point we are at, evaluated with the next timestep's conditioning.
            tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
            out = model(x, tt, **(model_kwargs or {}))
            _, eps = self.diffusion.predict(out, x, tt)
            x0_hat = (x - (1 - a_prev) ** 0.5 * eps) / a_prev ** 0.5
            x = a ** 0.5 * x0_hat + (1 - a) ** 0.5 * eps
        return x

    @torch.no_grad()
    def interpolate(self, model: Denoiser, z0: Tensor, z1: Tensor, n: int,
                    model_kwargs: dict | None = None) -> Tensor:
        """n images [n, ...] decoded at η = 0 from slerp(z0, z1, α) for α in linspace(0, 1, n);
        z0, z1 [1, ...] or [...]: noises (e.g. from invert or a seeded draw)."""
        z0, z1 = z0.reshape(1, *z0.shape[-3:]), z1.reshape(1, *z1.shape[-3:])
        alphas = torch.linspace(0, 1, n, dtype=z0.dtype, device=z0.device)
        zs = torch.cat([slerp(z0, z1, a) for a in alphas])
        return self.sample(model, tuple(zs.shape), noise=zs, eta=0.0, device=zs.device,
                           model_kwargs=model_kwargs)
