"""The original NeRF (Mildenhall et al. 2020), as in its NeRF-synthetic setup.

Positional encoding of the position (10 frequencies) and of the view direction (4), with the
input itself kept, as the authors' code does: gamma(p) = (p, sin(2^k p), cos(2^k p), k < L).
An MLP of 8 layers of 256 (ReLU) with the encoded position concatenated again into the fifth,
a density head (ReLU), then a 256-feature layer that, with the encoded direction, feeds one
layer of 128 and a sigmoid RGB head. Rendering takes 64 stratified "coarse" samples per ray and
128 more "fine" ones drawn from the coarse weights (hierarchical sampling); the fine network
sees all 192. Both go through nerfx.ops.composite_rays, and the loss is the sum of both MSEs.

Samples span each ray's segment inside the scene box (clipped with the same slab test the
marcher uses), so there is no near/far to set per dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nerfx.ops.composite import as_composite_input, composite_rays
from nerfx.specs import Composited, clip_to_box


@dataclass
class NeRFConfig:
    position_freqs: int = 10
    direction_freqs: int = 4
    depth: int = 8
    width: int = 256
    skip: int = 4  # the encoded input re-enters after this many layers
    n_coarse: int = 64
    n_fine: int = 128


def positional_encoding(x: torch.Tensor, n_freqs: int) -> torch.Tensor:
    """[..., C] -> [..., C * (1 + 2 * n_freqs)]: x, then sin and cos of 2^k x for k < n_freqs."""
    freqs = 2.0 ** torch.arange(n_freqs, dtype=x.dtype, device=x.device)  # [L]
    angles = (x[..., None, :] * freqs[:, None]).flatten(-2)  # [..., L * C]
    return torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=-1)


class NeRFField(nn.Module):
    """One NeRF MLP: positions [N, 3], unit directions [N, 3] -> (density [N], rgb [N, 3])."""

    def __init__(self, config: NeRFConfig):
        super().__init__()
        self.config = config
        pos_dim = 3 * (1 + 2 * config.position_freqs)
        dir_dim = 3 * (1 + 2 * config.direction_freqs)
        self.layers = nn.ModuleList()
        for i in range(config.depth):
            fan_in = pos_dim if i == 0 else config.width
            if i == config.skip + 1:
                fan_in += pos_dim
            self.layers.append(nn.Linear(fan_in, config.width))
        self.density_head = nn.Linear(config.width, 1)
        # Start at a density of about 1: with a ReLU head, an initialisation that clamps every
        # density to 0 gives no gradient at all (a dead start that seeds can hit).
        nn.init.constant_(self.density_head.bias, 1.0)
        self.feature = nn.Linear(config.width, config.width)
        self.view = nn.Linear(config.width + dir_dim, config.width // 2)
        self.rgb_head = nn.Linear(config.width // 2, 3)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = positional_encoding(x, self.config.position_freqs)  # [N, 63]
        h = encoded
        for i, layer in enumerate(self.layers):
            if i == self.config.skip + 1:
                h = torch.cat([encoded, h], dim=-1)
            h = torch.relu(layer(h))  # [N, width]
        sigma = torch.relu(self.density_head(h)[:, 0])
        view = torch.cat([self.feature(h), positional_encoding(d, self.config.direction_freqs)], -1)
        rgb = torch.sigmoid(self.rgb_head(torch.relu(self.view(view))))
        return sigma, rgb


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n_samples: int,
               generator: torch.Generator | None = None, perturb: bool = False) -> torch.Tensor:
    """Inverse-transform samples of the piecewise-constant pdf given by weights over bins.

    bins: [n_rays, M + 1] edges, weights: [n_rays, M] (>= 0) -> [n_rays, n_samples], sorted.
    Without perturbation the quantiles are evenly spaced (deterministic).
    """
    weights = weights + 1e-5  # a ray with no weight samples its segment uniformly
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.nn.functional.pad(torch.cumsum(pdf, -1), (1, 0)).clamp(max=1.0)  # [n, M + 1]
    shape = (bins.shape[0], n_samples)
    if perturb:
        u = torch.rand(shape, generator=generator, device=bins.device, dtype=bins.dtype)
    else:
        u = torch.linspace(0.0, 1.0, n_samples, device=bins.device, dtype=bins.dtype).expand(shape)
    u = u.contiguous()
    above = torch.searchsorted(cdf, u, right=True).clamp(1, cdf.shape[-1] - 1)  # [n, S]
    below = above - 1
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    bin_lo, bin_hi = bins.gather(-1, below), bins.gather(-1, above)
    span = cdf_hi - cdf_lo
    frac = torch.where(span > 0, (u - cdf_lo) / span.clamp(min=1e-12), torch.zeros_like(u))
    return bin_lo + frac * (bin_hi - bin_lo)


def _intervals(t: torch.Tensor, far: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample distances [n, S] -> (t_start, t_end) [n, S]: each sample runs to the next one, the
    last to the far end of the segment."""
    return t, torch.cat([t[:, 1:], far[:, None].expand(-1, 1)], dim=1)


class NeRF(nn.Module):
    """Coarse and fine NeRF fields over a scene box, rendered with hierarchical sampling."""

    def __init__(self, aabb: torch.Tensor | list[float], config: NeRFConfig | None = None):
        super().__init__()
        self.config = config = config or NeRFConfig()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).flatten())
        self.coarse = NeRFField(config)
        self.fine = NeRFField(config)

    def _composite(self, field: NeRFField, rays_o: torch.Tensor, rays_d: torch.Tensor,
                   t: torch.Tensor, far: torch.Tensor,
                   background: torch.Tensor | None) -> Composited:
        n, s = t.shape
        t_start, t_end = _intervals(t, far)  # [n, S] each
        positions = rays_o[:, None] + rays_d[:, None] * (0.5 * (t_start + t_end))[..., None]
        directions = rays_d[:, None].expand(n, s, 3)
        sigmas, rgbs = field(positions.reshape(-1, 3), directions.reshape(-1, 3))
        offsets = torch.arange(0, n * s + 1, s, device=t.device)  # every ray has S samples
        return composite_rays(as_composite_input(sigmas), as_composite_input(rgbs),
                              t_start.reshape(-1),
                              t_end.reshape(-1), offsets, background=background)

    def forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, *,
                background: torch.Tensor | None = None, perturb: bool = False,
                generator: torch.Generator | None = None) -> tuple[Composited, Composited]:
        """Rays [n, 3] (unit directions) -> (coarse, fine) renders. Rays that miss the box get
        empty segments and show the background."""
        config = self.config
        t_enter, t_exit, hit = clip_to_box(rays_o, rays_d, self.aabb[:3], self.aabb[3:])
        near = torch.where(hit, t_enter.clamp(min=0.0), torch.zeros_like(t_enter))  # [n]
        far = torch.where(hit, torch.maximum(t_exit, near), near)  # [n]
        # Stratified: one sample in each of n_coarse equal bins, at its centre without perturb.
        edges = torch.linspace(0.0, 1.0, config.n_coarse + 1, device=rays_o.device)  # [C + 1]
        bins = near[:, None] + (far - near)[:, None] * edges  # [n, C + 1]
        if perturb:
            jitter = torch.rand(bins[:, :-1].shape, generator=generator, device=rays_o.device)
        else:
            jitter = torch.full_like(bins[:, :-1], 0.5)
        t_coarse = bins[:, :-1] + (bins[:, 1:] - bins[:, :-1]) * jitter  # [n, C]
        coarse = self._composite(self.coarse, rays_o, rays_d, t_coarse, far, background)
        with torch.no_grad():  # the fine samples follow the coarse weights, without gradient
            mids = 0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])  # [n, C - 1]
            weights = coarse.weights.reshape(t_coarse.shape)[:, 1:-1]  # [n, C - 2]
            t_new = sample_pdf(mids, weights, config.n_fine, generator, perturb)  # [n, F]
            t_fine = torch.sort(torch.cat([t_coarse, t_new], -1), -1).values  # [n, C + F]
        fine = self._composite(self.fine, rays_o, rays_d, t_fine, far, background)
        return coarse, fine
