"""Training DDPM (Ho et al., 2020): the U-Net learns to predict the noise; samples by DDIM/DDPM."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from nerfx import distributed
from nerfx.data.images import ImageDataset
from nerfx.images import save_grid
from nerfx.loop import BatchStream
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.models.ddpm import EMA, DiffusionConfig, GaussianDiffusion
from nerfx.models.unet import UNet, UNetConfig

MODEL = "ddpm"
OPS: tuple[str, ...] = ("attention",)  # the nerfx.ops it runs
# gpu: the paper's CIFAR-10 run [DDPM §4, App. B; official run_cifar.py]: 35.7M-parameter U-Net,
# Adam 2e-4 with 5000 warm-up steps, batch 128, grad-norm clip 1, EMA 0.9999, 800k steps.
# cpu / fast: a small U-Net on 16x16 images, minutes on 2 cores (shapes, not paper quality).
PRESETS = {
    "gpu": dict(unet="cifar10", image_size=32, batch_size=128, lr=2e-4, warmup_steps=5000,
                grad_clip=1.0, ema_decay=0.9999, steps=800_000, save_every=5000,
                snapshot_every=10_000, sample_steps=50),
    "cpu": dict(unet="tiny", image_size=16, batch_size=32, lr=1e-3, warmup_steps=100,
                grad_clip=1.0, ema_decay=0.999, steps=8000, save_every=500,
                snapshot_every=1000, sample_steps=50),
    "fast": dict(unet="tiny", image_size=16, batch_size=32, lr=1e-3, warmup_steps=100,
                 grad_clip=1.0, ema_decay=0.995, steps=2500, save_every=500,
                 snapshot_every=500, sample_steps=50, train_images=4000, test_images=256),
}


def build_unet(settings: dict, channels: int, size: int, num_classes: int | None = None) -> UNet:
    preset = UNetConfig.cifar10 if settings["unet"] == "cifar10" else UNetConfig.tiny
    return UNet(preset(resolution=size, in_channels=channels, out_channels=channels,
                       num_classes=num_classes))


class Trainer:
    """nerfx.loop.Task for DDPM: one step is one batch of the simple loss [DDPM Algorithm 1]."""

    def __init__(self, settings: dict, train_set: ImageDataset, test_set: ImageDataset,
                 device: torch.device, seed: int):
        self.settings, self.device = settings, device
        self.items_per_step = settings["batch_size"]
        self.model = build_unet(settings, train_set.channels, train_set.resolution).to(device)
        self.diffusion = GaussianDiffusion(DiffusionConfig(
            schedule=settings.get("schedule", "linear"),
            objective=settings.get("objective", "eps")))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["lr"])
        self.ema = EMA(self.model, settings["ema_decay"])
        self.batches = BatchStream(train_set, settings["batch_size"], seed, device)
        # Timesteps and noise, drawn on the CPU; each process its own stream.
        self.noise = torch.Generator().manual_seed(distributed.process_seed(seed + 1))
        self.image_shape = tuple(train_set.images.shape[1:])
        self.seed = seed
        # bf16 autocast on a GPU; fp32 on the CPU, where bf16 convolutions are slower.
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                         else nullcontext())

    def train_step(self, step: int) -> dict[str, float]:
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
        return {"loss": loss.item()}

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
                             steps=self.settings["sample_steps"], seed=self.seed)
        save_grid(images, run / "samples" / f"step_{step:07d}.png", nrow=4)

    def finish(self, run: Path) -> dict:
        images = self.sample(self.settings.get("final_samples", 64),
                             steps=self.settings["sample_steps"], seed=self.seed)
        save_grid(images, run / "samples.png", nrow=8)
        return {"samples": "samples.png", "sampler": f"ddim, {self.settings['sample_steps']} "
                                                     "steps, eta 0, EMA weights",
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


def load_trained(config: dict, task_state: dict, device: torch.device
                 ) -> tuple[UNet, GaussianDiffusion]:
    """The EMA U-Net of a finished or interrupted run (eval mode) and its diffusion."""
    settings = config["settings"]
    channels, size, _ = config["image_shape"]
    model = build_unet(settings, channels, size).to(device)
    model.load_state_dict(task_state["ema"]["model"])
    diffusion = GaussianDiffusion(DiffusionConfig(schedule=settings.get("schedule", "linear"),
                                                  objective=settings.get("objective", "eps")))
    return model.eval().requires_grad_(False), diffusion
