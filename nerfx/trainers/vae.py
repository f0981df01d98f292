"""Training the VAE (Kingma & Welling, 2013): minimise -ELBO (β-weighted KL) by Adam."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from nerfx import distributed
from nerfx.data import ImageDataset, load_image_dataset
from nerfx.images import save_grid
from nerfx.loop import BatchStream
from nerfx.models.vae import VAE, VAEConfig
from nerfx.trainers.image_data import load_image_data

MODEL = "vae"
DEFAULT_DATA = "shapes"  # nerfx's procedural shapes (nerfx.data)
# The options of `python -m nerfx.sample` that only some models take, this one's:
SAMPLE_OPTIONS: tuple[str, ...] = ()
OPS: tuple[str, ...] = ()  # it runs no nerfx.ops
DATA_PARALLEL = True  # gradients averaged over processes (nerfx.distributed)
# Adam as in the paper's experiments [K&W §5: AdaGrad/Adam-style SGD, minibatches of 100];
# lr 1e-3 is the usual Adam setting for this model. Bernoulli likelihood on images in [0, 1].
PRESETS = {
    "gpu": dict(channels=(32, 64, 128), latent_dim=32, image_size=32, batch_size=128, lr=1e-3,
                steps=30_000, beta=1.0, save_every=2000, snapshot_every=5000),
    "cpu": dict(channels=(32, 64), latent_dim=16, image_size=16, batch_size=64, lr=1e-3,
                steps=4000, beta=1.0, save_every=500, snapshot_every=1000),
    # fast: minutes on 2 cores (the variants tried: benches/RESULTS.md, "Image models, CPU").
    "cpu-fast": dict(channels=(32, 64), latent_dim=16, image_size=16, batch_size=64, lr=2e-3,
                     steps=8000, beta=1.0, save_every=1000, snapshot_every=2000,
                     train_images=4000, test_images=512),
}
PRESETS["gpu-fast"] = PRESETS["cpu-fast"]  # a short run: the same on either device
VALUE_RANGE = (0.0, 1.0)     # the Bernoulli likelihood models pixels in [0, 1]


def vae_config(settings: dict, channels: int, size: int) -> VAEConfig:
    """The run's VAEConfig; runs written before a setting existed get its old default."""
    return VAEConfig(resolution=size, in_channels=channels, channels=tuple(settings["channels"]),
                     latent_dim=settings["latent_dim"], beta=settings["beta"],
                     likelihood=settings.get("likelihood", "bernoulli"),
                     gaussian_std=settings.get("gaussian_std"))


class Trainer:
    """nerfx.loop.Task for the VAE: one step is one batch of -ELBO [K&W eq. 10]."""

    def __init__(self, settings: dict, train_set: ImageDataset, test_set: ImageDataset,
                 device: torch.device, seed: int):
        self.settings, self.device, self.test_set = settings, device, test_set
        self.items_per_step = settings["batch_size"]
        self.model = VAE(vae_config(settings, train_set.channels,
                                    train_set.resolution)).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=settings["lr"])
        self.batches = BatchStream(train_set, settings["batch_size"], seed, device, VALUE_RANGE)
        self.noise = torch.Generator().manual_seed(distributed.process_seed(seed + 1))
        self.seed = seed

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        x, _ = self.batches.next()
        noise = torch.randn((x.shape[0], self.model.config.latent_dim),
                            generator=self.noise).to(self.device)
        out = self.model.loss(x, noise)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        distributed.average_gradients(self.model.parameters())
        self.optimizer.step()
        return {"loss": out.loss.detach(), "kl": out.kl.detach().mean()}

    @torch.no_grad()
    def test_elbo(self, chunk: int = 256) -> float:
        """Mean ELBO per image (nats) over the test split, in chunks."""
        self.model.eval()
        total, generator = 0.0, torch.Generator().manual_seed(self.seed)
        for i in range(0, len(self.test_set), chunk):
            x = self.test_set.as_float(VALUE_RANGE, slice(i, i + chunk)).to(self.device)
            noise = torch.randn((x.shape[0], self.model.config.latent_dim),
                                generator=generator).to(self.device)
            total += self.model.loss(x, noise).elbo.sum().item()
        self.model.train()
        return total / len(self.test_set)

    def pictures(self, run: Path, prefix: str) -> None:
        self.model.eval()
        generator = torch.Generator().manual_seed(self.seed)
        save_grid(self.model.sample(64, generator, self.device), run / f"{prefix}samples.png",
                  nrow=8, value_range=VALUE_RANGE)
        x = self.test_set.as_float(VALUE_RANGE, slice(0, 16)).to(self.device)
        pairs = torch.stack([x, self.model.reconstruct(x)], 1).flatten(0, 1)   # truth, recon
        save_grid(pairs, run / f"{prefix}reconstructions.png", nrow=8, value_range=VALUE_RANGE)
        self.model.train()

    def snapshot(self, run: Path, step: int) -> None:
        self.pictures(run / "progress", f"step_{step:07d}_")

    def finish(self, run: Path) -> dict:
        self.pictures(run, "")
        self.model.eval()
        a, b = self.test_set.as_float(VALUE_RANGE, slice(0, 2)).to(self.device)
        save_grid(self.model.interpolate(a, b, 10), run / "interpolation.png", nrow=10,
                  value_range=VALUE_RANGE)
        return {"test_elbo_nats": round(self.test_elbo(), 3), "samples": "samples.png",
                "reconstructions": "reconstructions.png", "interpolation": "interpolation.png"}

    def summary(self, metrics: dict) -> str:
        return f"test ELBO {metrics['test_elbo_nats']:.1f} nats per image"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "batches": self.batches.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])
        if distributed.is_main():
            self.noise.set_state(state["noise"].cpu())


def make_task(config: dict, device: torch.device) -> Trainer:
    return Trainer(config["settings"], *load_image_data(config), device, config["seed"])


def load_trained(config: dict, task_state: dict, device: torch.device) -> VAE:
    """The VAE of a finished or interrupted run, in eval mode."""
    settings = config["settings"]
    channels, size, _ = config["image_shape"]
    model = VAE(vae_config(settings, channels, size))
    model.load_state_dict(task_state["model"])
    return model.to(device).eval().requires_grad_(False)


def sample(options: argparse.Namespace, run: Path, config: dict, task_state: dict) -> Path:
    """`python -m nerfx.sample RUN`'s pictures of this run (options: its command line)."""
    model = load_trained(config, task_state, options.device)
    value_range = (0.0, 1.0)
    generator = torch.Generator().manual_seed(options.seed)
    samples = model.sample(options.n, generator, options.device)
    _, size, _ = config["image_shape"]
    test = load_image_dataset(config["data"], "test", size=size, seed=config["seed"], n=16)
    x = test.as_float(value_range).to(options.device)
    pairs = torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)
    strip = model.interpolate(x[0], x[1], 10)
    out = options.out or run / f"vae_samples_seed{options.seed}.png"
    for images, suffix, nrow in ((samples, "", 8), (pairs, "_reconstructions", 8),
                                 (strip, "_interpolation", 10)):
        save_grid(images, out.with_name(out.stem + suffix + out.suffix),
                  nrow=min(len(images), nrow), value_range=value_range)
    return out
