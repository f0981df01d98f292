"""Latent diffusion's second phase, steps ae_steps .. steps-1 of an ldm run: entering it (the
autoencoder frozen, the latent scale factor measured on training images, the training set's
posterior moments cached) and the class-conditional latent U-Net's steps on
z ~ q(z|x) · scale_factor, with its EMA.

The ldm trainer (nerfx/trainers/ldm.py) drives it; its checkpoint entries are "optimizer", "ema",
"scale_measured" and "latent_batches".
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch

from nerfx import distributed
from nerfx.data.image_datasets import ImageDataset
from nerfx.loop import BatchStream
from nerfx.models.autoencoder import DiagonalGaussian
from nerfx.models.ema import EMA
from nerfx.models.ldm import LatentDiffusion


class Moments:
    """The training set's cached posterior moments [N, 2 z_ch, r, r] seen as a dataset, so a
    BatchStream draws them in seeded epochs (its value range is ignored)."""

    def __init__(self, moments: torch.Tensor, labels: torch.Tensor):
        self.moments, self.labels = moments, labels

    def __len__(self) -> int:
        return len(self.labels)

    def as_float(self, _value_range: tuple[float, float], index: torch.Tensor) -> torch.Tensor:
        return self.moments[index]


class LatentPhase:
    """The latent U-Net's optimiser and EMA, and the batches of cached moments (made by enter(),
    at the first latent step of a run or of a resumed run); step(step) is one latent step,
    counted from the phase's start."""

    def __init__(self, model: LatentDiffusion, settings: dict, train_set: ImageDataset,
                 device: torch.device, seed: int, noise: torch.Generator,
                 autocast: AbstractContextManager):
        self.model, self.settings, self.train_set = model, settings, train_set
        self.device, self.seed = device, seed
        self.noise, self.autocast = noise, autocast   # the run's training randomness, shared
        # [ldm/models/diffusion/ddpm.py LatentDiffusion.configure_optimizers: AdamW]
        self.optimizer = torch.optim.AdamW(model.unet.parameters(), lr=settings["lr"])
        self.ema = EMA(model.unet, settings["ema_decay"])
        self.batches: BatchStream | None = None     # made on entering the phase
        self.batches_state: dict | None = None      # theirs from a checkpoint, until then
        self.scale_measured = False

    @property
    def entered(self) -> bool:
        return self.batches is not None

    @torch.no_grad()
    def enter(self) -> None:
        """Freezes the autoencoder, measures the scale factor (once per run) and caches the
        training set's posterior moments (recomputed on resume: a deterministic function of the
        frozen encoder)."""
        ae = self.model.autoencoder.eval().requires_grad_(False)
        if not self.scale_measured:
            n = min(len(self.train_set), self.settings.get("scale_images", 2048))
            generator = torch.Generator().manual_seed(self.seed + 2)
            self.model.set_scale_factor(self.model.measure_scale_factor(
                self.train_set.as_float(index=slice(0, n)), generator=generator))
            self.scale_measured = True
        moments = torch.cat([ae.quant_conv(ae.encoder(chunk.to(self.device)))
                             for chunk in self.train_set.as_float().split(512)])
        self.batches = BatchStream(Moments(moments, self.train_set.labels),
                                   self.settings["batch_size"], self.seed + 3, self.device)
        if self.batches_state is not None:
            self.batches.load_state_dict(self.batches_state)

    def learning_rate(self, step: int) -> float:
        """A linear warm-up over warmup_steps, then constant (the official code's
        configuration for class-conditional ImageNet has no schedule), or with
        settings["lr_decay"] == "cosine" a cosine to 0 at the last latent step."""
        s = self.settings
        lr = s["lr"] * min(1.0, (step + 1) / s["warmup_steps"])
        if s.get("lr_decay", "none") == "cosine":
            total = max(1, s["steps"] - s.get("ae_steps", 0) - s["warmup_steps"])
            progress = min(1.0, max(0, step - s["warmup_steps"]) / total)
            lr *= 0.5 * (1 + math.cos(math.pi * progress))
        return lr

    def step(self, step: int) -> dict[str, torch.Tensor]:
        assert self.batches is not None
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        moments, y = self.batches.next()
        eps = torch.randn((moments.shape[0], *self.model.latent_shape), generator=self.noise)
        z0 = self.model.scale_factor * DiagonalGaussian(moments).sample(noise=eps)
        self.model.unet.train()
        with self.autocast:
            loss = self.model.loss(z0, y, generator=self.noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.model.unet.parameters())
        torch.nn.utils.clip_grad_norm_(self.model.unet.parameters(), self.settings["grad_clip"])
        self.optimizer.step()
        self.ema.update(self.model.unet)
        return {"loss": loss.detach()}

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
                "scale_measured": self.scale_measured,
                "latent_batches": (self.batches.state_dict() if self.batches
                                   else self.batches_state or {})}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.scale_measured = bool(state["scale_measured"])
        self.batches = None  # rebuilt from the loaded encoder at the next latent step
        self.batches_state = state["latent_batches"] or None
