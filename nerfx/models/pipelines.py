"""What the trainer and the renderer drive: a model with its sampler, one interface per paper.

    pipeline = build_pipeline(spec)              # spec: the plain dict saved in config.json
    out = pipeline.train_forward(o, d, background, target, step, generator)
    out.loss.backward()
    image = pipeline.render(o, d, background)     # no gradient, one chunk of rays

`ngp` is Instant-NGP: the hash-grid field with its occupancy grid, marched and composited by
nerfx.ops. `nerf` is the original NeRF: coarse and fine MLPs with hierarchical sampling,
composited by the same op. Each states, as data, its optimiser settings, learning-rate schedule
and training presets (PRESETS: "gpu", "gpu-fast", "cpu", "cpu-fast"; SPEC_KEYS: the preset
entries that build the model). A new pipeline is a class here and an entry in PIPELINES.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from nerfx.models import without_run_settings
from nerfx.models.nerf import NeRF, NeRFConfig
from nerfx.models.ngp import InstantNGP, NGPConfig
from nerfx.ops.adam import SkipZeroAdam
from nerfx.render.inference import render_rays_compacting
from nerfx.render.occupancy import OccupancyGrid
from nerfx.render.renderer import render_rays_counted
from nerfx.specs import Composited

# Every preset holds these run settings (nerfx.train's flags of the same names override them).
RUN_KEYS = ("steps", "max_seconds", "batch_samples", "batch_rays", "downscale", "eval_views",
            "video_frames")


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
    ema_decay: float | None = None  # an EMA of the weights to evaluate, where the paper has one
    PRESETS: dict[str, dict]  # "gpu", "gpu-fast", "cpu", "cpu-fast" -> settings
    SPEC_KEYS: tuple[str, ...]  # preset entries that are model arguments (saved in config.json)

    @classmethod
    def preset(cls, device_type: str, fast: bool) -> dict:
        """A copy of the preset for a device type ("cuda" takes the GPU preset)."""
        name = ("gpu" if device_type == "cuda" else "cpu") + ("-fast" if fast else "")
        return dict(cls.PRESETS[name])

    @classmethod
    def first_batch_rays(cls, settings: dict) -> int:
        """Rays of the first step: the preset's batch_rays unless batch_samples says otherwise."""
        return settings["batch_rays"]

    @staticmethod
    def next_batch_rays(batch_rays: int, n_samples: int, batch_samples: int | None) -> int:
        """Rays of the next step, given the samples this step took (constant by default)."""
        return batch_rays

    @staticmethod
    def lr_factor(step: int) -> float:
        raise NotImplementedError

    @classmethod
    def scene_spec(cls, aabb_scale: int) -> dict:
        """Model arguments that follow from the scene (saved in config.json); none by default."""
        return {}

    def param_groups(self) -> list[dict]:
        """The optimiser's parameter groups (all parameters, no weight decay, by default)."""
        return [{"params": list(self.parameters())}]

    @classmethod
    def from_spec(cls, spec: dict) -> Pipeline:
        """spec: config.json's model entry without its name."""
        return cls(**spec)


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
    _GPU = dict(steps=35000, max_seconds=300.0, batch_samples=2**18, batch_rays=2**12,
                downscale=1, eval_views=200, video_frames=120, log2_hashmap_size=19,
                grid_resolution=128, decay=0.95, step_divisor=1024, loss="huber")
    # 2 cores: the grid prunes by step ~20 (from ~140 samples per ray), after which a step of
    # 1024 rays takes about 24 ms of one core. PSNR on 8 test views of the built-in lego against
    # one core's CPU time (2000 steps): L2 27.47 dB in 64 s, Huber 26.92 dB in 67 s (Huber is
    # instant-ngp's, kept for the GPU; L2 measures better here), grid decay 0.95 27.02 dB in 62 s
    # against 0.8's 27.47 in 64 s; 3000 steps added 0.06 dB for 21 s. max_seconds keeps the whole
    # --fast command near 2 minutes on a slower or busier machine.
    _CPU_FAST = dict(steps=2000, max_seconds=75.0, batch_samples=None, batch_rays=1024,
                     downscale=8, eval_views=8, video_frames=24, log2_hashmap_size=17,
                     grid_resolution=64, decay=0.8, step_divisor=256, loss="l2")
    PRESETS = {
        "gpu": _GPU,
        "gpu-fast": _GPU | dict(max_seconds=60.0, eval_views=20, downscale=2, video_frames=60),
        "cpu": _CPU_FAST | dict(steps=10000, max_seconds=3600.0, downscale=4, eval_views=50,
                                video_frames=60),
        "cpu-fast": _CPU_FAST,
    }
    SPEC_KEYS = ("log2_hashmap_size", "grid_resolution", "decay", "step_divisor", "loss")
    LOSSES = ("huber", "l2")

    def __init__(self, aabb: list[float], cascades: int = 1, log2_hashmap_size: int = 19,
                 grid_resolution: int = 128, decay: float = 0.95, step_divisor: int = 1024,
                 cone_angle: float | None = None, loss: str = "huber"):
        super().__init__()
        if loss not in self.LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {self.LOSSES}")
        self.loss = loss
        # Marching step growth dt = clamp(t * cone_angle, step_size, coarsest cell) (appendix
        # E.1: 1/256 when aabb_scale > 1, constant steps in the unit box); None: from the scene.
        self.cone_angle = self.scene_spec(2 ** (cascades - 1))["cone_angle"] \
            if cone_angle is None else float(cone_angle)
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

    @classmethod
    def from_spec(cls, spec: dict) -> InstantNGPPipeline:
        """Runs written before the loss was a setting trained with L2."""
        return cls(**({"loss": "l2"} | spec))

    @staticmethod
    def lr_factor(step: int) -> float:
        return 0.33 ** (0 if step < 20000 else 1 + (step - 20000) // 10000)

    @classmethod
    def scene_spec(cls, aabb_scale: int) -> dict:
        """Cone angle 1/256 for scenes larger than the unit box, 0 otherwise (instant-ngp
        src/testbed_nerf.cu: cone_angle() is 1/256 when aabb_scale > 1; paper appendix E.1)."""
        return {"cone_angle": 0.0 if aabb_scale <= 1 else 1 / 256}

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
    def next_batch_rays(batch_rays: int, n_samples: int, batch_samples: int | None) -> int:
        """As Instant-NGP does: as many rays as keep the samples per step at batch_samples."""
        if batch_samples is None:
            return batch_rays
        wanted = batch_rays * batch_samples / max(n_samples, 1)
        return int(min(max(128 * round(wanted / 128), 128), batch_samples))

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
    # GPU: 4096 rays of 64 + 128 samples, trained for days in the paper.
    _GPU = dict(steps=300_000, max_seconds=48 * 3600.0, batch_samples=None, batch_rays=4096,
                downscale=1, eval_views=200, video_frames=120, n_coarse=64, n_fine=128)
    _CPU_FAST = dict(steps=1000, max_seconds=300.0, batch_samples=None, batch_rays=256,
                     downscale=16, eval_views=4, video_frames=12, n_coarse=32, n_fine=64)
    PRESETS = {
        "gpu": _GPU,
        "gpu-fast": _GPU | dict(max_seconds=60.0, eval_views=20, downscale=2, video_frames=60),
        "cpu": _CPU_FAST | dict(steps=20000, max_seconds=3600.0, downscale=8, eval_views=20),
        "cpu-fast": _CPU_FAST,
    }
    SPEC_KEYS = ("n_coarse", "n_fine")

    @classmethod
    def first_batch_rays(cls, settings: dict) -> int:
        """With batch_samples: as many rays as make it (2 x coarse + fine samples per ray)."""
        if settings["batch_samples"] is None:
            return settings["batch_rays"]
        per_ray = 2 * settings["n_coarse"] + settings["n_fine"]
        return max(settings["batch_samples"] // per_ray, 1)

    @classmethod
    def from_spec(cls, spec: dict) -> NeRFPipeline:
        spec = dict(spec)  # NeRF has no cascades: its samples span the outermost box
        return cls(_outer_box(spec.pop("aabb"), spec.pop("cascades", 1)), **spec)

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


def make_optimizer(pipeline: Pipeline) -> torch.optim.Optimizer:
    """Adam with the pipeline's settings over its parameter groups, fused (one vectorised kernel
    for all parameters rather than a loop over tensors) where torch supports it. Groups marked
    skip_zero (Instant-NGP's hash table) skip the entries whose gradient is exactly 0, each
    bias-corrected by its own step count (paper sec. 4; tiny-cuda-nn's Adam): SkipZeroAdam.
    NeRF keeps torch's Adam."""
    settings = dict(lr=pipeline.lr, betas=pipeline.betas, eps=pipeline.eps)
    groups = pipeline.param_groups()
    make = SkipZeroAdam if any(g.get("skip_zero") for g in groups) else torch.optim.Adam
    try:
        return make(groups, fused=True, **settings)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return make(groups, **settings)


def regroup_optimizer_state(pipeline: Pipeline, optimizer: torch.optim.Optimizer,
                            state: dict) -> dict:
    """An optimiser state saved with every parameter in one group, in pipeline.parameters()
    order (nerfx before parameter groups), laid out as `optimizer`'s groups; other states as
    they are. Each parameter keeps its own moments whatever group it moved to."""
    saved = state["param_groups"]
    if len(saved) != 1 or len(optimizer.param_groups) == 1:
        return state
    position = {id(p): i for i, p in enumerate(pipeline.parameters())}
    if len(saved[0]["params"]) != len(position):
        raise ValueError(f"the saved optimiser holds {len(saved[0]['params'])} parameters, this "
                         f"model {len(position)}: the checkpoint belongs to another model")
    groups = [{**{k: v for k, v in group.items() if k != "params"},
               "params": [saved[0]["params"][position[id(p)]] for p in group["params"]]}
              for group in optimizer.param_groups]
    return {"state": state["state"], "param_groups": groups}


def _outer_box(aabb: list[float], cascades: int) -> list[float]:
    """The box of the outermost cascade: the aabb grown 2^(cascades - 1) times about its centre."""
    scale = 2 ** (cascades - 1)
    center = [(a + b) / 2 for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    half = [(b - a) / 2 * scale for a, b in zip(aabb[:3], aabb[3:], strict=True)]
    return [c - h for c, h in zip(center, half, strict=True)] + \
        [c + h for c, h in zip(center, half, strict=True)]


PIPELINES: dict[str, type[Pipeline]] = {"ngp": InstantNGPPipeline, "nerf": NeRFPipeline}
MODELS = tuple(PIPELINES)


def build_pipeline(spec: dict) -> InstantNGPPipeline | NeRFPipeline:
    """spec: {"name": "ngp" | "nerf", "aabb": [6], ...the model's keyword arguments}.

    The backend is a run setting (nerfx.ops.use_backend); a "backend" key, which config.json files
    written by older nerfx hold, is ignored."""
    spec = without_run_settings(spec)
    name = spec.pop("name")
    if name not in PIPELINES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
    return PIPELINES[name].from_spec(spec)


def optimize_step(pipeline: Pipeline, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, batch: tuple[torch.Tensor, ...], step: int,
                  generator: torch.Generator, autocast_dtype: torch.dtype | None = None
                  ) -> TrainOutput:
    """One step: the schedule's learning rate, forward (autocast when a dtype is given), scaled
    backward, Adam. batch: (origins, directions, backgrounds, targets), [n_rays, 3] each."""
    for group in optimizer.param_groups:
        group["lr"] = pipeline.lr * pipeline.lr_factor(step)
    device_type = batch[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        result = pipeline.train_forward(*batch, step, generator)
    # set_to_none=False (zeroing the gradient buffers in place) was tried: no change in system
    # time on 2 CPU cores (15 steps of 1024 rays: 2.70 s vs 2.63 s), so the default stays.
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(result.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return result
