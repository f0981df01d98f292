"""What the trainer and the renderer drive: a model with its sampler, one interface per paper.

    pipeline = build_pipeline(args)              # args: config.json's "pipeline" entry
    out = pipeline.train_forward(o, d, background, target, step, generator)
    out.loss.backward()
    image = pipeline.render(o, d, background)     # no gradient, one chunk of rays

`ngp` is Instant-NGP: the hash-grid field with its occupancy grid, marched and composited by
nerfx.ops. `nerf` is the original NeRF: coarse and fine MLPs with hierarchical sampling,
composited by the same op. Each states, as data, its optimiser settings and learning-rate
schedule, and which run settings are its constructor's arguments (BUILD_SETTINGS); its training
presets live with its trainer (nerfx/trainers/<model>.py). A new pipeline is a class here and an
entry in PIPELINES. `load_pipeline(run)` rebuilds a trained one from its run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from nerfx.models.nerf import NeRF, NeRFConfig
from nerfx.models.ngp import InstantNGP, NGPConfig
from nerfx.render.inference import render_rays_compacting
from nerfx.render.occupancy import OccupancyGrid
from nerfx.render.renderer import render_rays_counted
from nerfx.runs import read_run_checkpoint, read_run_config
from nerfx.specs import Composited, paper_step_size


class TrainOutput(NamedTuple):
    loss: torch.Tensor  # scalar, what the optimiser minimises
    mse: torch.Tensor  # scalar, of the final colour (training PSNR)
    n_samples: int  # field queries trained this step (all networks)
    n_marched: int | None = None  # samples marched before compaction, where the model compacts


class Pipeline(nn.Module):
    """What every radiance-field pipeline states as data, and the defaults of its hooks."""

    lr: float
    betas: tuple[float, float]
    eps: float
    random_background: bool
    jitter_pixels: bool = False  # training rays through random points of their pixels
    ema_decay: float | None = None  # an EMA of the weights to evaluate, where the paper has one
    BUILD_SETTINGS: tuple[str, ...]  # run settings that are constructor arguments

    @classmethod
    def first_batch_rays(cls, settings: dict) -> int:
        """Rays of the first step: the preset's batch_rays unless batch_samples says otherwise."""
        return settings["batch_rays"]

    @staticmethod
    def next_batch_rays(batch_rays: int, n_samples: int, batch_samples: int | None,
                        max_rays: int | None = None) -> int:
        """Rays of the next step, given the samples this step took (constant by default)."""
        return batch_rays

    @staticmethod
    def lr_factor(step: int) -> float:
        raise NotImplementedError

    @classmethod
    def scene_args(cls, aabb_scale: int, step_divisor: int | None = None) -> dict:
        """Model arguments that follow from the scene (saved in config.json); none by default."""
        return {}

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups (all parameters, no weight decay, by default)."""
        return [{"params": list(self.parameters())}]

    @classmethod
    def from_args(cls, args: dict) -> Pipeline:
        """args: config.json's "pipeline" entry without its name."""
        return cls(**args)


class InstantNGPPipeline(Pipeline):
    """Instant-NGP as its code trains it: Adam (0.9, 0.99, 1e-15), lr 1e-2, x0.33 at 20k steps
    and every 10k after, L2 1e-6 on the MLP weights only; training rays jittered by a random
    fraction of a step and compacted (stopped where transmittance falls below 1e-4); Huber loss;
    an EMA of the weights (0.95) for evaluation and rendering; cone stepping in large scenes."""

    lr, betas, eps = 1e-2, (0.9, 0.99), 1e-15
    # L2 on the MLP weight matrices, not the hash table (paper sec. 4; tiny-cuda-nn adam.h adds
    # l2_reg * weight to the matrix weights' gradient only; instant-ngp configs/nerf/base.json
    # l2_reg 1e-6). nerfx's MLPs have biases, which tiny-cuda-nn's do not: they go undecayed.
    mlp_weight_decay = 1e-6
    # instant-ngp configs/nerf/base.json: "optimizer": {"otype": "Ema", "decay": 0.95, ...}.
    ema_decay = 0.95
    # Huber's delta in colour units [0, 1]. instant-ngp's NeRF loss is huber_loss(..., 0.1) / 5
    # (src/testbed_nerf.cu loss_and_gradient): 0.5 d^2 / delta below delta, |d| - delta / 2
    # above (torch's smooth_l1 with beta = delta), divided by 5 = 1 / (2 delta) so that its
    # quadratic part is the L2 loss d^2.
    huber_delta = 0.1
    random_background = True  # training pixels on random colours: empty space must be empty
    # Training rays through uniformly random points of their pixels (src/testbed_nerf.cu,
    # generate_training_samples_nerf, snap_to_pixel_centers off); test views at the centres.
    jitter_pixels = True
    BUILD_SETTINGS = ("log2_hashmap_size", "grid_resolution", "decay", "step_divisor", "loss",
                      "grid_warmup_cells")
    LOSSES = ("huber", "l2")

    def __init__(self, aabb: list[float], cascades: int = 1, log2_hashmap_size: int = 19,
                 grid_resolution: int = 128, decay: float = 0.95, step_divisor: int = 1024,
                 cone_angle: float | None = None, loss: str = "huber",
                 grid_warmup_cells: int | None = None):
        super().__init__()
        if loss not in self.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {self.LOSSES}")
        self.loss = loss
        # Marching step growth dt = clamp(t * cone_angle, step_size, coarsest cell) (appendix
        # E.1: 1/256 when aabb_scale > 1, constant steps in the unit box); None: from the scene.
        self.cone_angle = self.scene_args(2 ** (cascades - 1), step_divisor)["cone_angle"] \
            if cone_angle is None else float(cone_angle)
        outer = _outer_box(aabb, cascades)
        self.field = InstantNGP(outer, NGPConfig(log2_hashmap_size=log2_hashmap_size),
                                 aabb_scale=2 ** (cascades - 1))
        self.grid = OccupancyGrid(aabb, resolution=grid_resolution, cascades=cascades,
                                  decay=decay, warmup_cells=grid_warmup_cells)
        extent = max(b - a for a, b in zip(aabb[:3], aabb[3:], strict=True))
        # The marching step (world units), defined once: the march takes it and the grid stores
        # the optical thickness sigma * step_size of it. The paper's is sqrt(3)/1024 of the
        # cascade-0 box (step_divisor 1024; instant-ngp MIN_CONE_STEPSIZE()).
        self.step_size = paper_step_size(extent, step_divisor)
        # A loaded grid whose thickness is for another step (nerfx.run_format's upgrade of a
        # grid of densities: a unit step) is re-expressed for this one, and re-thresholded.
        self.register_load_state_dict_post_hook(
            lambda module, _keys: module.grid.set_step_size(module.step_size)
            if float(module.grid.step_size) > 0 else None)

    @staticmethod
    def lr_factor(step: int) -> float:
        return 0.33 ** (0 if step < 20000 else 1 + (step - 20000) // 10000)

    @classmethod
    def scene_args(cls, aabb_scale: int, step_divisor: int | None = None) -> dict:
        """Cone angle 1/256 for scenes larger than the unit box, 0 otherwise (instant-ngp
        src/testbed_nerf.cu: cone_angle() is 1/256 when aabb_scale > 1; paper appendix E.1),
        for the paper's minimal step sqrt(3)/1024. A coarser minimal step (the CPU recipe's
        step_divisor 256) scales the angle with it, 1024 / step_divisor, so that steps start
        growing at the same distance (t = step / angle) as in instant-ngp."""
        if aabb_scale <= 1:
            return {"cone_angle": 0.0}
        return {"cone_angle": 1 / 256 * 1024 / (step_divisor or 1024)}

    def param_groups(self) -> list[dict]:
        """The hash table (skipping entries whose gradient is exactly 0, undecayed), the MLPs'
        weight matrices with L2, their biases without."""
        table = list(self.field.encoding.parameters())
        rest = [p for name, p in self.named_parameters() if not name.startswith("field.encoding")]
        return [{"params": table, "weight_decay": 0.0, "skip_zero": True},
                {"params": [p for p in rest if p.dim() >= 2],
                 "weight_decay": self.mlp_weight_decay},
                {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]

    @staticmethod
    def next_batch_rays(batch_rays: int, n_samples: int, batch_samples: int | None,
                        max_rays: int | None = None) -> int:
        """As Instant-NGP does: as many rays as keep the samples per step at batch_samples (a
        multiple of 128, at least 128), at most max_rays (the CPU recipe's cap) or
        batch_samples."""
        if batch_samples is None:
            return batch_rays
        wanted = batch_rays * batch_samples / max(n_samples, 1)
        cap = batch_samples if max_rays is None else min(max_rays, batch_samples)
        return int(min(max(128 * round(wanted / 128), 128), cap))

    def prepare(self, poses: torch.Tensor, intrinsics: torch.Tensor, width: int,
                height: int) -> None:
        """Before training: cells that no training camera sees are empty for good."""
        self.grid.mark_unseen_empty(poses, tuple(intrinsics[0, :2].tolist()),
                                    tuple(intrinsics[0, 2:4].tolist()), (width, height),
                                    intrinsics=intrinsics)   # each camera's own, lens included

    def train_forward(self, rays_o: torch.Tensor, rays_d: torch.Tensor, background: torch.Tensor,
                      target: torch.Tensor, step: int,
                      generator: torch.Generator | None = None) -> TrainOutput:
        self.grid.update(step, self.field.density, step_size=self.step_size, generator=generator)
        # Each ray starts at a random fraction of a step (instant-ngp advance_n_steps(..., rng))
        # and stops where its transmittance falls below 1e-4 (compaction).
        out, n_samples, n_marched = render_rays_counted(
            self.field, self.grid, rays_o, rays_d, step_size=self.step_size,
            cone_angle=self.cone_angle, background=background, perturb=True,
            generator=generator, density_fn=self.field.density)
        color = out.color.float()
        mse = nn.functional.mse_loss(color, target)
        loss = mse if self.loss == "l2" else 2 * self.huber_delta * \
            nn.functional.smooth_l1_loss(color, target, beta=self.huber_delta)
        return TrainOutput(loss, mse.detach(), n_samples, n_marched)

    @torch.no_grad()
    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor,
               background: torch.Tensor | None = None) -> Composited:
        return render_rays_compacting(rays_o, rays_d, self.grid, self.field,
                                      step_size=self.step_size, cone_angle=self.cone_angle,
                                      background=background)


class NeRFPipeline(Pipeline):
    """NeRF: Adam (0.9, 0.999, 1e-7), lr 5e-4 decaying exponentially to 5e-5 over 500k steps;
    the loss is the coarse plus the fine MSE, on a white background."""

    lr, betas, eps = 5e-4, (0.9, 0.999), 1e-7
    random_background = False  # NeRF trains its synthetic scenes on white
    BUILD_SETTINGS = ("n_coarse", "n_fine")

    @classmethod
    def first_batch_rays(cls, settings: dict) -> int:
        """With batch_samples: as many rays as make it (2 x coarse + fine samples per ray)."""
        if settings["batch_samples"] is None:
            return settings["batch_rays"]
        per_ray = 2 * settings["n_coarse"] + settings["n_fine"]
        return max(settings["batch_samples"] // per_ray, 1)

    @classmethod
    def from_args(cls, args: dict) -> NeRFPipeline:
        args = dict(args)  # NeRF has no cascades: its samples span the outermost box
        return cls(_outer_box(args.pop("aabb"), args.pop("cascades", 1)), **args)

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


def _outer_box(aabb: list[float], cascades: int) -> list[float]:
    """The box of the outermost cascade: the aabb grown 2^(cascades - 1) times about its centre."""
    scale = 2 ** (cascades - 1)
    center = [(a + b) / 2 for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    half = [(b - a) / 2 * scale for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    return [c - h for c, h in zip(center, half, strict=True)] + \
        [c + h for c, h in zip(center, half, strict=True)]


PIPELINES: dict[str, type[Pipeline]] = {"ngp": InstantNGPPipeline, "nerf": NeRFPipeline}
MODELS = tuple(PIPELINES)


def build_pipeline(args: dict) -> InstantNGPPipeline | NeRFPipeline:
    """args: {"name": "ngp" | "nerf", "aabb": [6], ...the pipeline's keyword arguments}."""
    args = dict(args)
    name = args.pop("name")
    if name not in PIPELINES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    return PIPELINES[name].from_args(args)


def load_pipeline(run: Path, device: torch.device | str = "cpu"
                  ) -> tuple[InstantNGPPipeline | NeRFPipeline, dict]:
    """-> (the trained pipeline of a run folder, in eval mode; the run's config). Where training
    kept an EMA of the weights, that average is what it loads."""
    config = read_run_config(run, MODELS)
    task_state = read_run_checkpoint(run, config, device)["task"]
    return trained_pipeline(config["pipeline"], task_state, device), config


def trained_pipeline(args: dict, task_state: dict, device: torch.device | str = "cpu"
                     ) -> InstantNGPPipeline | NeRFPipeline:
    """args: config.json's "pipeline"; task_state: a checkpoint's "task" (current format)."""
    pipeline = build_pipeline(args).to(device)
    ema = task_state.get("ema")
    pipeline.load_state_dict(ema["model"] if ema else task_state["pipeline"])
    return pipeline.eval()
