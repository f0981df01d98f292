"""What the trainer and the renderer drive: a model with its sampler, one interface per paper.

    pipeline = build_pipeline(spec)              # spec: the plain dict saved in config.json
    out = pipeline.train_forward(o, d, background, target, step, generator)
    out.loss.backward()
    image = pipeline.render(o, d, background)     # no gradient, one chunk of rays

`ngp` is Instant-NGP: the hash-grid field with its occupancy grid, marched and composited by
nerfx.ops. `nerf` is the original NeRF: coarse and fine MLPs with hierarchical sampling,
composited by the same op. Each states its optimiser settings and learning-rate schedule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from nerfx.models.nerf import NeRF, NeRFConfig
from nerfx.models.ngp import InstantNGP, NGPConfig
from nerfx.render.inference import render_rays_compacting
from nerfx.render.occupancy import OccupancyGrid
from nerfx.render.renderer import render_rays
from nerfx.specs import Composited

MODELS = ("ngp", "nerf")


class TrainOutput(NamedTuple):
    loss: torch.Tensor  # scalar, what the optimiser minimises
    mse: torch.Tensor  # scalar, of the final colour (training PSNR)
    n_samples: int  # field queries this step (all networks)


class InstantNGPPipeline(nn.Module):
    """Instant-NGP: Adam (0.9, 0.99, 1e-15), lr 1e-2, x0.33 at 20k steps and every 10k after."""

    lr, betas, eps = 1e-2, (0.9, 0.99), 1e-15
    random_background = True  # training pixels on random colours: empty space must be empty

    def __init__(self, aabb: list[float], cascades: int = 1, log2_hashmap_size: int = 19,
                 grid_resolution: int = 128, decay: float = 0.95, step_divisor: int = 1024):
        super().__init__()
        outer = _outer_box(aabb, cascades)
        self.field = InstantNGP(outer, NGPConfig(log2_hashmap_size=log2_hashmap_size),
                                 aabb_scale=2 ** (cascades - 1))
        self.grid = OccupancyGrid(aabb, resolution=grid_resolution, cascades=cascades,
                                  decay=decay)
        extent = max(b - a for a, b in zip(aabb[:3], aabb[3:], strict=True))
        # The marching step (world units), defined once: the march takes it and the grid stores
        # the optical thickness sigma * step_size of it. The paper's is sqrt(3)/1024 of the
        # cascade-0 box (step_divisor 1024; instant-ngp MIN_CONE_STEPSIZE()).
        self.step_size = math.sqrt(3) * extent / step_divisor
        # Checkpoints whose grid predates optical thickness load with raw densities converted
        # to a unit step; re-express them for this step at once (and re-threshold the bitfield).
        self.register_load_state_dict_post_hook(
            lambda module, _keys: module.grid.set_step_size(module.step_size)
            if float(module.grid.step_size) > 0 else None)

    @staticmethod
    def lr_factor(step: int) -> float:
        return 0.33 ** (0 if step < 20000 else 1 + (step - 20000) // 10000)

    def prepare(self, poses: torch.Tensor, intrinsics: torch.Tensor, width: int,
                height: int) -> None:
        """Before training: cells that no training camera sees are empty for good."""
        self.grid.mark_unseen_empty(poses, tuple(intrinsics[0, :2].tolist()),
                                    tuple(intrinsics[0, 2:].tolist()), (width, height))

    def train_forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, background: torch.Tensor,
                      target: torch.Tensor, step: int,
                      generator: torch.Generator | None = None) -> TrainOutput:
        self.grid.update(step, self.field.density, step_size=self.step_size, generator=generator)
        out, n_samples = render_rays(self.field, self.grid, rays_o, rays_d,
                                     step_size=self.step_size, background=background)
        mse = nn.functional.mse_loss(out.color.float(), target)
        return TrainOutput(mse, mse.detach(), n_samples)

    @torch.no_grad()
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited:
        return render_rays_compacting(rays_o, rays_d, self.grid, self.field,
                                      step_size=self.step_size, background=background)


class NeRFPipeline(nn.Module):
    """NeRF: Adam (0.9, 0.999, 1e-7), lr 5e-4 decaying exponentially to 5e-5 over 500k steps;
    the loss is the coarse plus the fine MSE, on a white background."""

    lr, betas, eps = 5e-4, (0.9, 0.999), 1e-7
    random_background = False  # NeRF trains its synthetic scenes on white

    def __init__(self, aabb: list[float], n_coarse: int = 64, n_fine: int = 128,
                 width: int = 256):
        super().__init__()
        self.nerf = NeRF(aabb, NeRFConfig(n_coarse=n_coarse, n_fine=n_fine, width=width))

    @staticmethod
    def lr_factor(step: int) -> float:
        return 0.1 ** (step / 500_000)

    def prepare(self, *_: object) -> None:
        """Nothing to set up: NeRF samples the whole box."""

    def train_forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, background: torch.Tensor,
                      target: torch.Tensor, step: int,
                      generator: torch.Generator | None = None) -> TrainOutput:
        coarse, fine = self.nerf(rays_o, rays_d, background=background, perturb=True,
                                 generator=generator)
        mse_coarse = nn.functional.mse_loss(coarse.color.float(), target)
        mse_fine = nn.functional.mse_loss(fine.color.float(), target)
        n_samples = rays_o.shape[0] * (2 * self.nerf.config.n_coarse + self.nerf.config.n_fine)
        return TrainOutput(mse_coarse + mse_fine, mse_fine.detach(), n_samples)

    @torch.no_grad()
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited:
        return self.nerf(rays_o, rays_d, background=background)[1]


def make_optimizer(pipeline: nn.Module) -> torch.optim.Adam:
    """Adam with the pipeline's settings, fused (one vectorised kernel for all parameters rather
    than a loop over tensors) where torch supports it."""
    settings = dict(lr=pipeline.lr, betas=pipeline.betas, eps=pipeline.eps)
    try:
        return torch.optim.Adam(pipeline.parameters(), fused=True, **settings)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(pipeline.parameters(), **settings)


def _outer_box(aabb: list[float], cascades: int) -> list[float]:
    """The box of the outermost cascade: the aabb grown 2^(cascades - 1) times about its centre."""
    scale = 2 ** (cascades - 1)
    center = [(a + b) / 2 for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    half = [(b - a) / 2 * scale for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    return [c - h for c, h in zip(center, half, strict=True)] + \
        [c + h for c, h in zip(center, half, strict=True)]


def build_pipeline(spec: dict) -> InstantNGPPipeline | NeRFPipeline:
    """spec: {"name": "ngp" | "nerf", "aabb": [6], ...the model's keyword arguments}.

    The backend is a run setting (nerfx.ops.use_backend); a "backend" key, which config.json files
    written by older nerfx hold, is ignored."""
    spec = dict(spec)
    spec.pop("backend", None)
    name = spec.pop("name")
    if name == "ngp":
        return InstantNGPPipeline(**spec)
    if name == "nerf":
        # NeRF has no cascades: its samples span the outermost box.
        return NeRFPipeline(_outer_box(spec.pop("aabb"), spec.pop("cascades", 1)), **spec)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
