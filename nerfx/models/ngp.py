"""Instant-NGP's radiance field (Mueller et al. 2022), as in its NeRF-synthetic setup.

Hash-grid encoding (L=16, F=2, T=2^19, N_min=16, N_max=2048 * aabb scale) -> density MLP
(one hidden layer of 64) -> 16 features, the first of which is log-density (truncated exp);
colour MLP (two hidden layers of 64) on those 16 plus degree-4 spherical harmonics of the view
direction -> sigmoid RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nerfx.ops.hashgrid import HashGridEncoding


@dataclass
class NGPConfig:
    n_levels: int = 16
    n_features_per_level: int = 2
    log2_hashmap_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048  # times the aabb scale
    hidden: int = 64
    geo_features: int = 16  # density MLP outputs, the first is log-density


class TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)), so large densities cannot blow up training."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return TruncExp.apply(x)


def spherical_harmonics(d: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics of degree < 4 (16 coefficients) of unit directions [..., 3]."""
    x, y, z = d.unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack([
        torch.full_like(x, 0.28209479177387814),
        -0.48860251190291987 * y,
        0.48860251190291987 * z,
        -0.48860251190291987 * x,
        1.0925484305920792 * xy,
        -1.0925484305920792 * yz,
        0.94617469575755997 * zz - 0.31539156525251999,
        -1.0925484305920792 * xz,
        0.54627421529603959 * (xx - yy),
        0.59004358992664352 * y * (-3.0 * xx + yy),
        2.8906114426405538 * xy * z,
        0.45704579946446572 * y * (1.0 - 5.0 * zz),
        0.3731763325901154 * z * (5.0 * zz - 3.0),
        0.45704579946446572 * x * (1.0 - 5.0 * zz),
        1.4453057213202769 * z * (xx - yy),
        0.59004358992664352 * x * (-xx + 3.0 * yy),
    ], dim=-1)


class InstantNGP(nn.Module):
    """Radiance field over an axis-aligned box: positions [N, 3] in world units."""

    def __init__(self, aabb: torch.Tensor | list[float], config: NGPConfig | None = None,
                 aabb_scale: int = 1):
        super().__init__()
        self.config = config = config or NGPConfig()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).flatten())
        self.encoding = HashGridEncoding(
            n_input_dims=3, n_levels=config.n_levels,
            n_features_per_level=config.n_features_per_level,
            log2_hashmap_size=config.log2_hashmap_size, base_resolution=config.base_resolution,
            finest_resolution=config.finest_resolution * aabb_scale)
        self.density_mlp = nn.Sequential(
            nn.Linear(self.encoding.output_dim, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.geo_features))
        self.color_mlp = nn.Sequential(
            nn.Linear(config.geo_features + 16, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, 3))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """World positions [N, 3] -> [0, 1]^3 over the aabb."""
        return (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])

    def geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (density [N], geometry features [N, 16])"""
        features = self.density_mlp(self.encoding(self.normalize(x)))
        # exp in float32: under fp16 autocast it would overflow above log-density 11.
        return trunc_exp(features[:, 0].float()), features

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density [N] at world positions [N, 3] (for the occupancy grid)."""
        return self.geometry(x)[0]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N, 3], directions [N, 3] -> (density [N], rgb [N, 3] in [0, 1])"""
        sigma, features = self.geometry(x)
        sh = spherical_harmonics(torch.nn.functional.normalize(d, dim=-1))
        rgb = torch.sigmoid(self.color_mlp(torch.cat([features, sh], dim=-1)))
        return sigma, rgb
