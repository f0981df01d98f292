"""Denoising diffusion probabilistic models (Ho et al., 2020).

Forward process q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 - ᾱ_t) I) over t = 0..T-1 (0-based, as in the
official code diffusion_tf/diffusion_utils_2.py), ᾱ_t = prod_{s<=t} (1 - β_s). The model predicts
ε (the paper), x_0, or v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0 (Salimans & Ho, 2022); all three are
turned into x̂_0 and ε̂ by the same closed forms. Training minimises the "simple" loss, the
unweighted mean squared error on the objective's target (DDPM eq. 14). Sampling is ancestral:
x_{t-1} = μ̃_t(x_t, x̂_0) + σ_t z with σ_t² = β_t ("fixed large", the paper's CIFAR-10 choice) or
β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t) ("fixed small").

The model is any callable (x_t [B, C, H, W], t [B] int64) -> [B, C, H, W]; class labels or a
context go in through `model_kwargs`, or by wrapping the model (e.g. for classifier-free
guidance). The samples come from an exponential moving average of the weights
(nerfx.models.ema).
The training recipe (Adam 2e-4, warm-up 5000, batch 128, clip 1, EMA 0.9999 [DDPM App. B,
official run_cifar.py]) lives with the trainer, nerfx/trainers/ddpm.py.

    diffusion = GaussianDiffusion(DiffusionConfig())        # T=1000, linear 1e-4 -> 0.02, eps
    loss = diffusion.loss(model, x0)                         # x0 [B, 3, 32, 32] in [-1, 1]
    x = diffusion.sample(model, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ["DiffusionConfig", "Denoiser", "GaussianDiffusion", "beta_schedule", "gaussian_noise",
           "gaussian_noise_like"]

Denoiser = Callable[..., Tensor]  # (x_t [B, ...], t [B] int64, **kwargs) -> [B, ...]
OBJECTIVES = ("eps", "x0", "v")
SCHEDULES = ("linear", "scaled_linear", "cosine")
VARIANCES = ("fixed_large", "fixed_small")


@dataclass
class DiffusionConfig:
    timesteps: int = 1000  # T                                              [DDPM §4: 1000]
    schedule: str = "linear"  # "linear" (DDPM), "scaled_linear" (latent diffusion's code) or
    #                           "cosine" (Nichol & Dhariwal 2021, eq. 17)
    beta_start: float = 1e-4  # β_1                                         [DDPM §4: 1e-4]
    beta_end: float = 0.02  # β_T                                           [DDPM §4: 0.02]
    objective: str = "eps"  # what the model predicts: "eps" [DDPM eq. 11], "x0" or "v"
    variance: str = "fixed_large"  # σ_t² = β_t [official run_cifar.py: model_var_type
    #                                 fixedlarge] or "fixed_small": β̃_t
    clip_denoised: bool = True  # clip x̂_0 to [-1, 1] when sampling [official: clip_denoised]
    min_snr_gamma: float | None = None  # None: the simple loss [DDPM eq. 14]; γ: each example's
    #   loss weighted as if it were on x_0 with weight min(SNR_t, γ) [Hang et al. 2023, "Min-SNR
    #   weighting", §3.4: γ = 5]

    def __post_init__(self) -> None:
        for name, value, allowed in (("schedule", self.schedule, SCHEDULES),
                                     ("objective", self.objective, OBJECTIVES),
                                     ("variance", self.variance, VARIANCES)):
            if value not in allowed:
                raise ValueError(f"DiffusionConfig.{name} must be one of {allowed}, got {value!r}")
        if self.timesteps < 1:
            raise ValueError(f"DiffusionConfig.timesteps must be >= 1, got {self.timesteps}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ValueError(f"DiffusionConfig.min_snr_gamma must be > 0 or None, got "
                             f"{self.min_snr_gamma}")


def beta_schedule(name: str, timesteps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> Tensor:
    """β_t [T] in float64."""
    if name == "linear":  # [DDPM §4; official diffusion_utils_2.get_beta_schedule 'linear']
        return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
    if name == "scaled_linear":  # √β evenly spaced [CompVis latent-diffusion ldm/modules/
        # diffusionmodules/util.py make_beta_schedule 'linear'; diffusers 'scaled_linear']
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, timesteps,
                              dtype=torch.float64) ** 2
    if name == "cosine":  # [Nichol & Dhariwal 2021, eq. 17, s = 0.008, β clipped at 0.999]
        s = 0.008
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {name!r}: use one of {SCHEDULES}")


def _at(values: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """values[t] [B] broadcast against x [B, ...], in x's dtype and device."""
    out = values.to(x.device)[t.to(x.device)].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


class GaussianDiffusion:
    """The schedule and the closed forms; no parameters (the model is passed in)."""

    def __init__(self, config: DiffusionConfig | None = None):
        self.config = c = config or DiffusionConfig()
        self.num_timesteps = c.timesteps
        # Precomputed in float64 like the official code, gathered into the sample's dtype.
        betas = beta_schedule(c.schedule, c.timesteps, c.beta_start, c.beta_end)  # [T]
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, 0)  # ᾱ_t
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        self.betas, self.alphas_cumprod, self.alphas_cumprod_prev = (
            betas, alphas_cumprod, alphas_cumprod_prev)
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, β̃_t)             [DDPM eq. 6-7]
        self.posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef_x0 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef_xt = ((1.0 - alphas_cumprod_prev) * alphas.sqrt()
                                       / (1.0 - alphas_cumprod))
        # β̃_0 = 0: the official code takes the log of β̃ with β̃_0 replaced by β̃_1, and
        # "fixed large" uses β_t but with β̃_1 at t = 0 (diffusion_utils_2.py p_mean_variance).
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
            if c.timesteps > 1 else self.posterior_variance.clamp(min=1e-20))
        self.fixed_large_log_variance = torch.log(
            torch.cat([self.posterior_variance[1:2], betas[1:]]) if c.timesteps > 1 else betas)

    # --- forward process -----------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε                                   [DDPM eq. 4]"""
        return (_at(self.sqrt_alphas_cumprod, t, x0) * x0
                + _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise)

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0)                            [DDPM eq. 7]"""
        mean = (_at(self.posterior_mean_coef_x0, t, xt) * x0
                + _at(self.posterior_mean_coef_xt, t, xt) * xt)
        return mean, _at(self.posterior_variance, t, xt)

    # --- conversions between ε, x_0 and v at (x_t, t) -------------------------------------

    def eps_to_x0(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        return ((xt - _at(self.sqrt_one_minus_alphas_cumprod, t, xt) * eps)
                / _at(self.sqrt_alphas_cumprod, t, xt))

    def x0_to_eps(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        return ((xt - _at(self.sqrt_alphas_cumprod, t, xt) * x0)
                / _at(self.sqrt_one_minus_alphas_cumprod, t, xt))

    def v_target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """v = sqrt(ᾱ) ε - sqrt(1 - ᾱ) x_0                     [Salimans & Ho 2022, §4]"""
        return (_at(self.sqrt_alphas_cumprod, t, x0) * eps
                - _at(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0)

    def v_to_x0(self, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
        """x_0 = sqrt(ᾱ) x_t - sqrt(1 - ᾱ) v"""
        return (_at(self.sqrt_alphas_cumprod, t, xt) * xt
                - _at(self.sqrt_one_minus_alphas_cumprod, t, xt) * v)

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """What the model is trained to output for this objective."""
        obj = self.config.objective
        return eps if obj == "eps" else x0 if obj == "x0" else self.v_target(x0, t, eps)

    def predict(self, output: Tensor, xt: Tensor, t: Tensor,
                clip: bool = False) -> tuple[Tensor, Tensor]:
        """The model's output -> (x̂_0, ε̂); with clip, x̂_0 is clipped to [-1, 1] and ε̂
        recomputed from it, so the two stay consistent."""
        obj = self.config.objective
        if obj == "eps":
            eps, x0 = output, self.eps_to_x0(xt, t, output)
        elif obj == "x0":
            x0 = output
            eps = self.x0_to_eps(xt, t, x0)
        else:
            x0 = self.v_to_x0(xt, t, output)
            eps = self.x0_to_eps(xt, t, x0)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = self.x0_to_eps(xt, t, x0)
        return x0, eps

    # --- training ------------------------------------------------------------------------

    def snr(self, t: Tensor) -> Tensor:
        """SNR_t = ᾱ_t / (1 - ᾱ_t) [B], float64."""
        a = self.alphas_cumprod[t.cpu()]
        return a / (1.0 - a)

    def loss_weights(self, t: Tensor) -> Tensor:
        """Min-SNR-γ weights [B] for the objective's squared error [Hang et al. 2023, eq. 10 and
        §3.4]: the x_0 error weighted by min(SNR, γ) is, in terms of the objective's error,
        ε: min(SNR, γ) / SNR; x_0: min(SNR, γ); v: min(SNR, γ) / (SNR + 1)."""
        snr = self.snr(t)
        clipped = snr.clamp(max=self.config.min_snr_gamma)
        obj = self.config.objective
        weight = clipped / snr if obj == "eps" else clipped if obj == "x0" else clipped / (snr + 1)
        return weight.to(device=t.device, dtype=torch.float32)

    def loss(self, model: Denoiser, x0: Tensor, t: Tensor | None = None,
             noise: Tensor | None = None, generator: torch.Generator | None = None,
             model_kwargs: dict | None = None) -> Tensor:
        """The simple loss: mean over the batch and pixels of |target - model(x_t, t)|²
        (each example weighted by `loss_weights` when min_snr_gamma is set).

        t ~ U{0..T-1} and ε ~ N(0, I) unless given                        [DDPM Algorithm 1]
        """
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.num_timesteps, (b,), generator=generator,
                              device=generator.device if generator else "cpu").to(x0.device)
        if noise is None:
            noise = gaussian_noise_like(x0, generator)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t, **(model_kwargs or {}))
        error = (out.float() - self.target(x0, t, noise).float()).pow(2)  # [B, ...]
        if self.config.min_snr_gamma is None:
            return error.mean()
        per_example = error.flatten(1).mean(1)  # [B]
        return (self.loss_weights(t) * per_example).mean()

    # --- sampling ------------------------------------------------------------------------

    def p_mean_variance(self, model: Denoiser, xt: Tensor, t: Tensor,
                        model_kwargs: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, log variance, x̂_0) of p(x_{t-1} | x_t)."""
        out = model(xt, t, **(model_kwargs or {}))
        x0, _ = self.predict(out, xt, t, clip=self.config.clip_denoised)
        mean, _ = self.q_posterior(x0, xt, t)
        log_var = (self.fixed_large_log_variance if self.config.variance == "fixed_large"
                   else self.posterior_log_variance_clipped)
        return mean, _at(log_var, t, xt), x0

    @torch.no_grad()
    def p_sample(self, model: Denoiser, xt: Tensor, t: Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None,
                 model_kwargs: dict | None = None) -> tuple[Tensor, Tensor]:
        """One ancestral step x_t -> x_{t-1} (no noise added at t = 0); returns (x_{t-1}, x̂_0).
                                                                          [DDPM Algorithm 2]"""
        mean, log_var, x0 = self.p_mean_variance(model, xt, t, model_kwargs)
        if noise is None:
            noise = gaussian_noise_like(xt, generator)
        nonzero = (t != 0).to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return mean + nonzero * torch.exp(0.5 * log_var) * noise, x0

    @torch.no_grad()
    def sample(self, model: Denoiser, shape: tuple[int, ...], generator: torch.Generator |
               None = None, device: torch.device | str = "cpu", noise: Tensor | None = None,
               model_kwargs: dict | None = None, progress: bool = False) -> Tensor:
        """Ancestral sampling from x_T ~ N(0, I) through all T steps -> x_0 [shape]."""
        x = noise if noise is not None else gaussian_noise(shape, generator, device)
        steps = range(self.num_timesteps - 1, -1, -1)
        for i in tqdm(steps, disable=not progress, desc="ddpm", leave=False):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            x, _ = self.p_sample(model, x, t, generator=generator, model_kwargs=model_kwargs)
        return x


def gaussian_noise(shape: tuple[int, ...], generator: torch.Generator | None,
           device: torch.device | str) -> Tensor:
    """Noise drawn on the generator's device (so a CPU generator gives the same numbers for any
    model device), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def gaussian_noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return gaussian_noise(tuple(x.shape), generator, x.device).to(x.dtype)
