"""Latent diffusion's first phase, steps 0 .. ae_steps-1 of an ldm run: the KL autoencoder's
training (L1 + KL, and from `adversarial_start` on the patch-adversarial term with its
discriminator), and the autoencoder's reconstruction metrics on the test split.

The ldm trainer (nerfx/trainers/ldm.py) drives it; its checkpoint entries are "ae_optimizer",
"batches" and, with the adversarial term, "discriminator" and "disc_optimizer".
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager

import torch

from nerfx import distributed
from nerfx.data.image_datasets import ImageDataset
from nerfx.loop import BatchStream
from nerfx.models.autoencoder import PatchDiscriminator, adaptive_weight, hinge_d_loss
from nerfx.models.ldm import LatentDiffusion


class AutoencoderPhase:
    """The autoencoder's optimiser, batches and (with settings["adversarial_start"]) its
    discriminator; step(step) is one autoencoder step."""

    def __init__(self, model: LatentDiffusion, settings: dict, train_set: ImageDataset,
                 device: torch.device, seed: int, noise: torch.Generator,
                 autocast: AbstractContextManager):
        self.model, self.settings, self.device = model, settings, device
        self.noise, self.autocast = noise, autocast   # the run's training randomness, shared
        # [ldm/models/autoencoder.py AutoencoderKL.configure_optimizers: Adam betas (0.5, 0.9)]
        self.optimizer = torch.optim.Adam(model.autoencoder.parameters(), lr=settings["ae_lr"],
                                          betas=(0.5, 0.9))
        self.adversarial_start = settings.get("adversarial_start")
        self.discriminator = self.disc_optimizer = None
        if self.adversarial_start is not None:
            self.discriminator = PatchDiscriminator(
                train_set.channels, settings.get("disc_ndf", 64),
                settings.get("disc_layers", 3)).to(device)
            # [autoencoder.py configure_optimizers: the discriminator's Adam, betas (0.5, 0.9)]
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(),
                                                   lr=settings["ae_lr"], betas=(0.5, 0.9))
        self.batches = BatchStream(train_set, settings.get("ae_batch_size",
                                                           settings["batch_size"]), seed, device)

    def learning_rate(self, step: int) -> float:
        """ae_lr, constant [autoencoder.py: no schedule], or with settings["ae_lr_decay"] ==
        "cosine" a cosine from ae_lr to 0 over the ae_steps."""
        s = self.settings
        if s.get("ae_lr_decay", "none") != "cosine":
            return s["ae_lr"]
        return s["ae_lr"] * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, s["ae_steps"]))))

    def step(self, step: int) -> dict[str, torch.Tensor]:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        ae = self.model.autoencoder.train()
        x, _ = self.batches.next()
        noise = torch.randn((x.shape[0], *self.model.latent_shape), generator=self.noise)
        with self.autocast:
            out = ae.loss(x, noise=noise.to(self.device))
        losses = {"ae_loss": out.loss.detach(), "l1": out.l1.detach(), "kl": out.kl.detach()}
        adversarial = self.discriminator is not None and step >= self.adversarial_start
        loss = out.loss
        if adversarial:  # [contperceptual.py: g_loss = -E[D(x̂)], weighted adaptively]
            assert self.discriminator is not None
            self.discriminator.train()  # batch statistics, as in the official loss
            g_loss = -self.discriminator(out.recon).mean()
            weight = adaptive_weight(out.nll, g_loss, ae.decoder.conv_out.weight,
                                     self.settings.get("disc_weight", 0.5))
            loss = loss + weight * g_loss
            losses.update(g_loss=g_loss.detach(), d_weight=weight.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(ae.parameters())
        self.optimizer.step()
        if adversarial:  # the discriminator's step: hinge loss on real and reconstructed
            assert self.discriminator is not None and self.disc_optimizer is not None
            # real and fake in separate calls: BatchNorm statistics per kind, as the official
            d_loss = hinge_d_loss(self.discriminator(x), self.discriminator(out.recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            distributed.average_gradients(self.discriminator.parameters())
            self.disc_optimizer.step()
            losses["d_loss"] = d_loss.detach()
        return losses

    def state_dict(self) -> dict:
        state = {"ae_optimizer": self.optimizer.state_dict(),
                 "batches": self.batches.state_dict()}
        if self.discriminator is not None and self.disc_optimizer is not None:
            state.update(discriminator=self.discriminator.state_dict(),
                         disc_optimizer=self.disc_optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["ae_optimizer"])
        self.batches.load_state_dict(state["batches"])
        if self.discriminator is not None and self.disc_optimizer is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])


@torch.no_grad()
def test_reconstruction(model: LatentDiffusion, test_set: ImageDataset, device: torch.device,
                        seed: int, scale_measured: bool, chunk: int = 256) -> dict:
    """Mean |x - x̂| (images in [-1, 1]) and PSNR (on [0, 1]) over the test split and, once the
    scale factor is measured, it and the standard deviation of the scaled test latents (≈ 1 when
    the scale factor transfers)."""
    ae = model.autoencoder.eval()
    abs_err = sq_err = 0.0
    latents = []
    generator = torch.Generator().manual_seed(seed)
    for i in range(0, len(test_set), chunk):
        x = test_set.as_float(index=slice(i, i + chunk)).to(device)
        err = x - ae.reconstruct(x)
        abs_err += err.abs().mean((1, 2, 3)).sum().item()
        sq_err += (err / 2).pow(2).mean((1, 2, 3)).sum().item()      # on [0, 1]
        latents.append(model.encode(x, generator).cpu())
    n = len(test_set)
    mse = sq_err / n
    out = {"test_l1": round(abs_err / n, 5),
           "test_psnr_db": round(float(-10 * torch.log10(torch.tensor(mse))), 2)}
    if scale_measured:          # (an autoencoder-only run has not measured it)
        out.update(scale_factor=round(float(model.scale_factor), 5),
                   scaled_test_latent_std=round(float(torch.cat(latents).std()), 4))
    return out
