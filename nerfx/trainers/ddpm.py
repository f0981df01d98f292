"""Training DDPM (Ho et al., 2020): the U-Net learns to predict the noise; samples by DDIM/DDPM."""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from nerfx import distributed
from nerfx.data.image_datasets import ImageDataset
from nerfx.images import save_grid
from nerfx.loop import BatchStream
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion
from nerfx.models.ema import EMA
from nerfx.models.unet import UNet, UNetConfig
from nerfx.runs import RunError
from nerfx.trainers.image_data import load_image_data

MODEL = "ddpm"
DEFAULT_DATA = "shapes"  # nerfx's procedural shapes (nerfx.data)
# The options of `python -m nerfx.sample` that only some models take, this one's:
SAMPLE_OPTIONS: tuple[str, ...] = ("interpolate",)
OPS: tuple[str, ...] = ("attention",)  # the nerfx.ops it runs
DATA_PARALLEL = True  # gradients averaged over processes (nerfx.distributed)
# gpu: the paper's CIFAR-10 run [DDPM §4, App. B; official run_cifar.py]: 35.7M-parameter U-Net,
# linear β schedule, ε-prediction, Adam 2e-4 with 5000 warm-up steps, batch 128, grad-norm
# clip 1, EMA 0.9999, 800k steps.
# cpu / fast: choices for the built-in shapes on a CPU, each chosen by the Fréchet distance of
# its samples (the recipes tried and their figures: benches/RESULTS.md, "Image models, CPU").
# The sampling grids use DDIM, 50 steps, η = 0, from the EMA weights.
_CPU = dict(
    unet="tiny",         # UNetConfig.tiny: ch 32, mult (1,2), 1 block per level, attention at
    #                      8x8, no dropout; 0.70M parameters [CPU choice]
    image_size=16,       # pixels a side [CPU choice: the shapes stay recognisable at 16]
    schedule="cosine",   # ᾱ_t [Nichol & Dhariwal 2021, §3.2: linear wastes its last steps on
    #                      noise at low resolution]
    objective="v",       # the model predicts v [Salimans & Ho 2022, §4]
    batch_size=16,       # images per step [CPU choice: more steps beat bigger batches here]
    lr=2e-3,             # Adam's peak learning rate [CPU choice]
    warmup_steps=200,    # steps of linear lr warm-up [official: 5000; CPU choice]
    grad_clip=1.0,       # max global gradient norm [official run_cifar.py: 1]
    ema_decay=0.999,     # per step, after warm-up (1+n)/(10+n) [CPU choice: ~1000-step window
    #                      for short runs; the paper's 0.9999 suits 800k steps]
    steps=30_000,        # optimiser steps [CPU choice]
    save_every=1000,     # steps between checkpoints
    snapshot_every=2000,  # steps between sample grids (run/samples/)
    sample_steps=50,     # DDIM steps for the grids [DDIM Table 1: 50]
    sample_eta=0.0,      # DDIM η for the grids [DDIM §5: η = 0, deterministic]
)

PRESETS = {
    "gpu": dict(unet="cifar10", image_size=32, schedule="linear", objective="eps",
                batch_size=128, lr=2e-4, warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999,
                steps=800_000, save_every=5000, snapshot_every=10_000, sample_steps=50),
    "cpu": _CPU,
    # fast: the cpu recipe, shorter (under 10 minutes on 2 cores). train_images, test_images:
    # how many shapes images are drawn [CPU choice].
    "cpu-fast": _CPU | dict(steps=13_000, snapshot_every=1000, train_images=4000, test_images=256),
}
PRESETS["gpu-fast"] = PRESETS["cpu-fast"]  # a short run: the same on either device


def build_unet(settings: dict, channels: int, size: int, num_classes: int | None = None) -> UNet:
    """settings["unet"]: "cifar10", "tiny" (UNetConfig's presets) or a dict of UNetConfig fields
    over UNetConfig's defaults (lists, as config.json holds them, become tuples), e.g.
    --set 'unet={"ch": 32, "ch_mult": [1, 2, 2], "attn_resolutions": [8], "num_groups": 8}'."""
    unet = settings["unet"]
    if isinstance(unet, dict):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in unet.items()}
        config = UNetConfig(**fields)
    elif unet in ("cifar10", "tiny"):
        config = getattr(UNetConfig, unet)()
    else:
        raise ValueError(f"ddpm setting unet must be 'cifar10', 'tiny' or a dict of UNetConfig "
                         f"fields, got {unet!r}")
    config.resolution, config.in_channels, config.out_channels = size, channels, channels
    config.num_classes = num_classes
    return UNet(config)


def diffusion_of(settings: dict) -> GaussianDiffusion:
    """The run's diffusion; runs written before a setting existed get its old default."""
    return GaussianDiffusion(DiffusionConfig(schedule=settings.get("schedule", "linear"),
                                             objective=settings.get("objective", "eps"),
                                             min_snr_gamma=settings.get("min_snr_gamma")))


class Trainer:
    """nerfx.loop.Task for DDPM: one step is one batch of the simple loss [DDPM Algorithm 1]."""

    def __init__(self, settings: dict, train_set: ImageDataset, test_set: ImageDataset,
                 device: torch.device, seed: int):
        self.settings, self.device = settings, device
        self.items_per_step = settings["batch_size"]
        self.model = build_unet(settings, train_set.channels, train_set.resolution).to(device)
        self.diffusion = diffusion_of(settings)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["lr"], fused=True)
        self.ema = EMA(self.model, settings["ema_decay"])
        self.batches = BatchStream(train_set, settings["batch_size"], seed, device)
        # Timesteps and noise, drawn on the CPU; each process its own stream.
        self.noise = torch.Generator().manual_seed(distributed.process_seed(seed + 1))
        self.image_shape = tuple(train_set.images.shape[1:])
        self.seed = seed
        self.sample_eta = settings.get("sample_eta", 0.0)  # DDIM η of the grids
        # bf16 autocast on a GPU; fp32 on the CPU, where bf16 convolutions are slower.
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else nullcontext())

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:   # linear warm-up [official: warmup 5000]
            group["lr"] = self.settings["lr"] * min(1.0, (step + 1) / self.settings["warmup_steps"])
        x0, _ = self.batches.next()
        t = torch.randint(0, self.diffusion.num_timesteps, (x0.shape[0],),
                          generator=self.noise).to(self.device)
        noise = torch.randn(x0.shape, generator=self.noise).to(self.device)
        with self.autocast:
            loss = self.diffusion.loss(self.model, x0, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.parameters())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings["grad_clip"])
        self.optimizer.step()
        self.ema.update(self.model)
        return {"loss": loss.detach()}

    def sample(self, n: int, sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
               seed: int = 0) -> torch.Tensor:
        """n images [n, C, H, W] in [-1, 1] from the EMA weights."""
        generator = torch.Generator().manual_seed(seed)
        shape = (n, *self.image_shape)
        model = self.ema.model
        if sampler == "ddpm":
            return self.diffusion.sample(model, shape, generator, self.device)
        ddim = DDIMSampler(self.diffusion, DDIMConfig(steps=steps, eta=eta))
        return ddim.sample(model, shape, generator, self.device)

    def snapshot(self, run: Path, step: int) -> None:
        images = self.sample(min(16, self.settings.get("final_samples", 64)),
                             steps=self.settings["sample_steps"], eta=self.sample_eta,
                             seed=self.seed)
        save_grid(images, run / "samples" / f"step_{step:07d}.png", nrow=4)

    def finish(self, run: Path) -> dict:
        images = self.sample(self.settings.get("final_samples", 64),
                             steps=self.settings["sample_steps"], eta=self.sample_eta,
                             seed=self.seed)
        save_grid(images, run / "samples.png", nrow=8)
        return {"samples": "samples.png", "sampler": f"ddim, {self.settings['sample_steps']} "
                                                     f"steps, eta {self.sample_eta:g}, EMA weights",
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def summary(self, metrics: dict) -> str:
        return f"{metrics['parameters'] / 1e6:.2f}M parameters, samples in {metrics['samples']}"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(), "batches": self.batches.state_dict(),
                "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.batches.load_state_dict(state["batches"])
        if distributed.is_main():
            self.noise.set_state(state["noise"].cpu())


def make_task(config: dict, device: torch.device) -> Trainer:
    return Trainer(config["settings"], *load_image_data(config), device, config["seed"])


def load_trained(config: dict, task_state: dict, device: torch.device
                 ) -> tuple[UNet, GaussianDiffusion]:
    """The EMA U-Net of a finished or interrupted run (eval mode) and its diffusion."""
    settings = config["settings"]
    channels, size, _ = config["image_shape"]
    model = build_unet(settings, channels, size).to(device)
    model.load_state_dict(task_state["ema"]["model"])
    diffusion = diffusion_of(settings)
    return model.eval().requires_grad_(False), diffusion


def sample(options: argparse.Namespace, run: Path, config: dict, task_state: dict) -> Path:
    """`python -m nerfx.sample RUN`'s pictures of this run (options: its command line)."""
    model, diffusion = load_trained(config, task_state, options.device)
    shape = tuple(config["image_shape"])
    ddim = DDIMSampler(diffusion, DDIMConfig(steps=options.steps, eta=options.eta,
                                             spacing=options.spacing))
    if options.interpolate:
        try:
            a, b = (int(s) for s in options.interpolate.split(","))
        except ValueError:
            raise RunError("--interpolate takes two seeds, as in 3,7") from None
        z0, z1 = (torch.randn((1, *shape), generator=torch.Generator().manual_seed(s))
                  for s in (a, b))
        images = ddim.interpolate(model, z0.to(options.device), z1.to(options.device), options.n)
        name = f"interpolate_{a}_{b}_ddim{options.steps}.png"
    else:
        generator = torch.Generator().manual_seed(options.seed)
        if options.sampler == "ddpm":
            images = diffusion.sample(model, (options.n, *shape), generator, options.device,
                                      progress=True)
            name = f"samples_ddpm{diffusion.num_timesteps}_seed{options.seed}.png"
        else:
            images = ddim.sample(model, (options.n, *shape), generator, options.device,
                                 progress=True)
            name = f"samples_ddim{options.steps}_eta{options.eta:g}_seed{options.seed}.png"
    nrow = options.n if options.interpolate else min(options.n, 8)      # a strip, or rows of 8
    return save_grid(images, options.out or run / name, nrow=nrow)
