"""An exponential moving average of a model's weights, the copy that evaluation and sampling use
while the raw weights keep training (DDPM, latent diffusion, Instant-NGP)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """θ_ema <- d θ_ema + (1 - d) θ after every optimiser step; `ema.model` is a frozen copy (eval
    mode) to evaluate or sample from; buffers are copied as they are.

    Two ways to keep early averages from holding on to the random initialisation:
    - warmup: d = min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's
      ExponentialMovingAverage with num_updates; the DDPM and LDM trainers, decay 0.9999
      [DDPM App. B]).
    - debias: the average divided by 1 - decay^n, i.e. θ_ema <- lerp(θ_ema, θ, (1 - d) /
      (1 - d^n)) (tiny-cuda-nn's EmaOptimizer, which instant-ngp's NeRF config wraps around Adam
      with decay 0.95: include/tiny-cuda-nn/optimizers/ema.h).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True,
                 debias: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if warmup and debias:
            raise ValueError("EMA: choose warmup or debias, not both")
        self.decay, self.warmup, self.debias, self.num_updates = decay, warmup, debias, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def weight(self) -> float:
        """How far this update moves the average toward the weights: 1 - d, debiased."""
        d = self.current_decay()
        if self.debias:
            return (1 - d) / (1 - d ** (self.num_updates + 1))
        return 1 - d

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params,
                                                          strict=True)]
        torch._foreach_lerp_(ema_params, params, self.weight())
        for e, b in zip(self.model.buffers(), model.buffers(), strict=True):
            e.copy_(b)
        self.num_updates += 1

    def copy_to(self, model: nn.Module) -> None:
        """Loads the averaged weights into model."""
        model.load_state_dict(self.model.state_dict())

    def state_dict(self) -> dict:
        return {"decay": self.decay, "warmup": self.warmup, "debias": self.debias,
                "num_updates": self.num_updates, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.debias = state.get("debias", False)  # absent from states written before debiasing
        self.num_updates = state["num_updates"]
        self.model.load_state_dict(state["model"])
