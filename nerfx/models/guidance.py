"""Classifier-free guidance (Ho & Salimans, 2022, "Classifier-Free Diffusion Guidance"): one
class-conditional denoiser serves as its own unconditional model. In training each label is
replaced by a "null" class with probability p_uncond (`drop_labels`); in sampling the two
predictions are mixed, ε̂ = ε̂(z, ∅) + s (ε̂(z, y) - ε̂(z, ∅)) (`ClassifierFreeGuidance`).

    y = drop_labels(y, p=0.1, null_label=num_classes, generator=g)        # training, y [B]
    guided = ClassifierFreeGuidance(unet, scale=3.0, null_label=num_classes)
    eps = guided(z_t, t, y)                                               # sampling, [B, ...]
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ClassifierFreeGuidance", "drop_labels"]


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
