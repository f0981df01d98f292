"""Training latent diffusion (Rombach et al., 2022): the KL autoencoder, then the class-conditional
latent U-Net with label dropout for classifier-free guidance, on one step counter.

Steps 0 .. ae_steps-1 train the autoencoder (L1 + KL); at step ae_steps the autoencoder is frozen,
the latent scale factor is measured on training images and the training set's posterior moments
are cached; the remaining steps train the latent U-Net on z ~ q(z|x) · scale_factor. A checkpoint
in either phase resumes exactly. `settings["autoencoder_run"] = RUN` takes the autoencoder of an
earlier ldm run instead (its architecture and weights; ae_steps becomes 0):

    python -m nerfx.train --model ldm --fast --steps 3000 --out runs/ae          # autoencoder only
    python -m nerfx.train --model ldm --fast --set autoencoder_run=runs/ae --steps 4000

finish() writes samples.png (one row per class, guidance settings["guidance"]) and, with
fid_samples > 0, the Fréchet distance and nerfx-classifier class accuracy per guidance scale.

The Trainer here drives the pieces beside it: ldm_autoencoder.py (the autoencoder phase, its
reconstruction metrics), ldm_latent.py (entering the latent phase, its steps) and
ldm_evaluation.py (the guidance evaluation).
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch

from nerfx import distributed
from nerfx.data.image_datasets import ImageDataset
from nerfx.images import save_grid
from nerfx.models.autoencoder import AutoencoderConfig, KLAutoencoder
from nerfx.models.ddpm import DiffusionConfig
from nerfx.models.ldm import LatentDiffusion, LDMConfig, class_grid_labels
from nerfx.models.unet import UNetConfig
from nerfx.runs import RunError, read_run_checkpoint, read_run_config
from nerfx.trainers.image_data import load_image_data
from nerfx.trainers.ldm_autoencoder import AutoencoderPhase, test_reconstruction
from nerfx.trainers.ldm_evaluation import guidance_evaluation
from nerfx.trainers.ldm_latent import LatentPhase

MODEL = "ldm"
DEFAULT_DATA = "shapes"  # nerfx's procedural shapes (nerfx.data)
# The options of `python -m nerfx.sample` that only some models take, this one's:
SAMPLE_OPTIONS: tuple[str, ...] = ("guidance", "label", "per_class")
OPS: tuple[str, ...] = ("attention",)  # the nerfx.ops it runs
DATA_PARALLEL = True  # gradients averaged over processes (nerfx.distributed)
# gpu: the paper's components at 32x32 [KL-f4: configs/autoencoder/autoencoder_kl_64x64x3.yaml
# (ch 128, ch_mult 1,2,4, 2 blocks, z 3 channels, kl_weight 1e-6, Adam betas (0.5, 0.9), lr
# 4.5e-6 x batch as main.py scales base_learning_rate); latent U-Net as
# configs/latent-diffusion/cin-ldm-vq-f8.yaml (256 channels, 1,2,4, 2 blocks, spatial
# transformers with 32-channel heads at every level, class embedding 512, AdamW, EMA 0.9999)]
# with label dropout 0.1 [Ho & Salimans 2022].
# The patch-adversarial term of the paper's autoencoder loss is off in every preset (it needs
# the long training the paper gives it: disc_start 50001); `--set adversarial_start=N` turns it
# on from autoencoder step N (disc_weight 0.5, disc_layers 3 [contperceptual.py defaults]; use
# 2 layers below 32x32).
# cpu: small networks on 16x16 shapes, f=4: 4x4 latents, with 4 channels rather than
# KL-f4's 3 (the better reconstructions on shapes: benches/RESULTS.md); minutes on 2 cores.
_CPU = dict(image_size=16, batch_size=64, ae_batch_size=32,
            ae=dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, num_groups=8),
            ae_steps=8000, ae_lr=2e-3,
            unet=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4, 2),
                      dropout=0.0, num_groups=8),
            context_dim=64, head_channels=16, transformer_depth=1, p_uncond=0.1,
            lr=1e-3, warmup_steps=100, grad_clip=1.0, ema_decay=0.999,
            steps=20_000, save_every=500, snapshot_every=1000, sample_steps=50,
            guidance=3.0, guidance_eval=(1.0, 3.0, 5.0), fid_samples=1000,
            scale_images=2048, autoencoder_run=None)

PRESETS = {
    "gpu": dict(image_size=32, batch_size=128, ae_batch_size=64,
                ae=dict(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3),
                ae_steps=50_000, ae_lr=4.5e-6 * 64,
                unet=dict(ch=256, ch_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(8, 4, 2),
                          dropout=0.0),
                context_dim=512, head_channels=32, transformer_depth=1, p_uncond=0.1,
                lr=1e-6 * 128, warmup_steps=1000, grad_clip=1.0, ema_decay=0.9999,
                steps=250_000, save_every=5000, snapshot_every=10_000, sample_steps=50,
                guidance=3.0, guidance_eval=(1.0, 3.0, 5.0), fid_samples=2000,
                scale_images=4096, autoencoder_run=None),
    "cpu": _CPU,
    # fast: f=2 (8x8x4 latents of the 16 px shapes: at f=4 the judge names the class of only
    # 63 % of the reconstructions), a U-Net with attention at 4x4 only, the latent phase with
    # Min-SNR-5 weighting [Hang et al. 2023 §3.4: γ 5] and lr 2e-3 decayed by a cosine to 0,
    # the official code's β schedule [cin-ldm-vq-f8.yaml: make_beta_schedule "linear", √β
    # evenly spaced, β 0.0015 -> 0.0195 over 1000 steps; the paper names none];
    # DDIM 25 steps (as accurate as 50 here); one process of one thread per free core
    # (processes "auto": each its batch, gradients averaged); sized for 10 minutes on 2 cores,
    # evaluation included (benches/RESULTS.md, latent diffusion on the built-in shapes).
    "cpu-fast": _CPU | dict(ae=dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, z_channels=4,
                                    num_groups=8),
                            ae_steps=1500,
                            unet=dict(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                      attn_resolutions=(4,), dropout=0.0, num_groups=8),
                            lr=2e-3, lr_decay="cosine",
                            diffusion=dict(min_snr_gamma=5.0, schedule="scaled_linear",
                                           beta_start=0.0015, beta_end=0.0195),
                            ema_decay=0.995, steps=3300, sample_steps=25, processes="auto",
                            guidance_eval=(1.0, 2.0, 3.0, 5.0, 7.0), fid_samples=256,
                            train_images=4000, test_images=512),
}
PRESETS["gpu-fast"] = PRESETS["cpu-fast"]  # a short run: the same on either device


def autoencoder_config(settings: dict, channels: int, size: int) -> AutoencoderConfig:
    return AutoencoderConfig(resolution=size, in_channels=channels,
                             **settings["ae"])


def ldm_config(settings: dict, ae: AutoencoderConfig, num_classes: int) -> LDMConfig:
    unet = UNetConfig(**{**settings["unet"],
                         "resolution": ae.latent_resolution, "in_channels": ae.z_channels,
                         "out_channels": ae.z_channels})
    # settings["diffusion"]: DiffusionConfig fields over LDMConfig's (schedule, beta_start,
    # beta_end, min_snr_gamma, ...); latents are unbounded, so x̂_0 is never clipped.
    diffusion = DiffusionConfig(**{"clip_denoised": False, **settings.get("diffusion", {})})
    return LDMConfig(num_classes=num_classes, context_dim=settings["context_dim"],
                     head_channels=settings["head_channels"],
                     transformer_depth=settings["transformer_depth"],
                     p_uncond=settings["p_uncond"],
                     label_in_time=settings.get("label_in_time", False), unet=unet,
                     diffusion=diffusion)


def build_model(settings: dict, channels: int, size: int, num_classes: int) -> LatentDiffusion:
    ae = autoencoder_config(settings, channels, size)
    return LatentDiffusion(KLAutoencoder(ae), ldm_config(settings, ae, num_classes))


class Trainer:
    """nerfx.loop.Task for latent diffusion: autoencoder steps (AutoencoderPhase), then latent
    U-Net steps (LatentPhase), on one step counter."""

    def __init__(self, settings: dict, train_set: ImageDataset, test_set: ImageDataset,
                 device: torch.device, seed: int):
        self.settings, self.device, self.seed = settings, device, seed
        self.train_set, self.test_set = train_set, test_set
        self.classes = tuple(train_set.classes)
        if settings.get("autoencoder_run"):
            ae_state = self._take_autoencoder(Path(settings["autoencoder_run"]))
        else:
            ae_state = None
        self.ae_steps = int(settings.get("ae_steps", 0))
        self.model = build_model(settings, train_set.channels, train_set.resolution,
                                 len(self.classes)).to(device)
        if ae_state is not None:
            self.model.autoencoder.load_state_dict(ae_state)
        # All training randomness (posterior samples, t, ε, label dropout), drawn on the CPU;
        # each process its own stream under torchrun.
        self.noise = torch.Generator().manual_seed(distributed.process_seed(seed + 1))
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                    else nullcontext())
        phase = (self.model, settings, train_set, device, seed, self.noise, autocast)
        self.ae_phase, self.latent_phase = AutoencoderPhase(*phase), LatentPhase(*phase)

    @property
    def items_per_step(self) -> int:
        if self.ae_steps and not self.latent_phase.entered:
            return self.ae_phase.batches.batch_size
        return self.settings["batch_size"]

    # --- the autoencoder from another run ----------------------------------------------------

    def _take_autoencoder(self, run: Path) -> dict:
        """The autoencoder weights of an earlier ldm run; its architecture goes into settings
        (so this run's config.json records it) and this run trains no autoencoder."""
        try:
            other = read_run_config(run, (MODEL,))
            payload = read_run_checkpoint(run, other)
        except RunError as exc:
            raise RunError(f"cannot read the autoencoder run: {exc}") from None
        if payload["step"] < other["settings"].get("ae_steps", 0):
            raise RunError(f"{run}: its autoencoder trained {payload['step']} of "
                           f"{other['settings']['ae_steps']} steps; finish that run first")
        self.settings["ae"] = dict(other["settings"]["ae"])
        self.settings["ae_steps"] = 0
        prefix = "autoencoder."
        return {k[len(prefix):]: v for k, v in payload["task"]["model"].items()
                if k.startswith(prefix)}

    # --- training ------------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, torch.Tensor]:
        if step < self.ae_steps:
            return self.ae_phase.step(step)
        if not self.latent_phase.entered:
            self.latent_phase.enter()
        return self.latent_phase.step(step - self.ae_steps)

    # --- pictures and metrics ------------------------------------------------------------------

    def sample(self, labels: torch.Tensor, guidance: float, steps: int | None = None,
               seed: int = 0, sampler: str = "ddim") -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] for labels [B], from the EMA U-Net."""
        generator = torch.Generator().manual_seed(seed)
        return self.model.sample(labels, guidance, sampler,
                                 steps or self.settings["sample_steps"],
                                 generator=generator, unet=self.latent_phase.ema.model)

    @torch.no_grad()
    def reconstruction_pictures(self, path: Path, n: int = 16) -> None:
        x = self.test_set.as_float(index=slice(0, n)).to(self.device)
        pairs = torch.stack([x, self.model.autoencoder.reconstruct(x)], 1).flatten(0, 1)
        save_grid(pairs, path, nrow=8)

    def class_grid(self, path: Path, per_class: int, guidance: float) -> torch.Tensor:
        """One row per class: per_class guided samples each."""
        images = self.sample(class_grid_labels(len(self.classes), per_class), guidance,
                             seed=self.seed)
        save_grid(images, path, nrow=per_class)
        return images

    def snapshot(self, run: Path, step: int) -> None:
        self.model.autoencoder.eval()
        self.reconstruction_pictures(run / "progress" / f"step_{step:07d}_reconstructions.png")
        if step > self.ae_steps and self.latent_phase.entered:
            self.class_grid(run / "progress" / f"step_{step:07d}_samples.png", 4,
                            self.settings["guidance"])

    def finish(self, run: Path) -> dict:
        s = self.settings
        if not self.latent_phase.entered and s["steps"] > self.ae_steps:
            self.latent_phase.enter()  # a run resumed at the boundary, then stopped
        metrics: dict = {"parameters_autoencoder": _count(self.model.autoencoder),
                         "parameters_unet": _count(self.model.unet),
                         "latent_shape": list(self.model.latent_shape),
                         "factor": self.model.autoencoder.config.factor}
        self.reconstruction_pictures(run / "reconstructions.png")
        metrics.update(test_reconstruction(self.model, self.test_set, self.device, self.seed,
                                           self.latent_phase.scale_measured),
                       reconstructions="reconstructions.png")
        if not self.latent_phase.entered:  # only the autoencoder was trained
            return metrics
        self.class_grid(run / "samples.png", s.get("final_per_class", 8), s["guidance"])
        metrics.update(samples="samples.png", classes=list(self.classes),
                       sampler=f"ddim, {s['sample_steps']} steps, eta 0, EMA weights, "
                               f"guidance {s['guidance']:g}; one row per class")
        if s.get("fid_samples", 0) > 0:
            metrics["guidance_eval"] = guidance_evaluation(
                run, self.sample, self.model.autoencoder, self.train_set, self.test_set,
                s["guidance_eval"], s["fid_samples"], self.seed, self.device)
        return metrics

    def summary(self, metrics: dict) -> str:
        text = f"autoencoder f={metrics['factor']} test PSNR {metrics['test_psnr_db']} dB"
        if "scale_factor" in metrics:
            text += f", scale factor {metrics['scale_factor']:.3g}"
        for key, value in metrics.get("guidance_eval", {}).items():
            if key.startswith("guidance"):
                text += (f"; {key}: Fréchet {value['frechet']:.3g}, class accuracy "
                         f"{value['class_accuracy']:.2f}")
        return text + (f"; samples in {metrics['samples']}" if "samples" in metrics else "")

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), **self.ae_phase.state_dict(),
                **self.latent_phase.state_dict(), "noise": self.noise.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ae_phase.load_state_dict(state)
        self.latent_phase.load_state_dict(state)
        if distributed.is_main():               # the other processes keep their own streams
            self.noise.set_state(state["noise"].cpu())


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_task(config: dict, device: torch.device) -> Trainer:
    return Trainer(config["settings"], *load_image_data(config), device, config["seed"])


def load_trained(config: dict, task_state: dict, device: torch.device | str) -> LatentDiffusion:
    """The latent diffusion model of a finished or interrupted run, in eval mode: its
    autoencoder, the EMA weights of its latent U-Net and its scale factor."""
    settings = config["settings"]
    channels, size, _ = config["image_shape"]
    model = build_model(settings, channels, size, len(config["classes"]))
    model.load_state_dict(task_state["model"])
    model.unet.load_state_dict(task_state["ema"]["model"])
    return model.to(device).eval().requires_grad_(False)


def sample(options: argparse.Namespace, run: Path, config: dict, task_state: dict) -> Path:
    """`python -m nerfx.sample RUN`'s pictures of this run (options: its command line)."""
    model = load_trained(config, task_state, options.device)
    classes, per_class = list(config["classes"]), options.per_class or 8
    guidance = (config["settings"].get("guidance", 1.0) if options.guidance is None
                else options.guidance)
    if options.label is None:
        labels = torch.arange(len(classes)).repeat_interleave(per_class)  # a row per class
        nrow, what = per_class, "classes"
    else:
        label = int(options.label) if options.label.lstrip("-").isdigit() else (
            classes.index(options.label) if options.label in classes else -1)
        if not 0 <= label < len(classes):
            raise RunError(f"--class {options.label}: this run's classes are 0..{len(classes) - 1} "
                           f"({', '.join(classes)})")
        labels = torch.full((options.n,), label)
        nrow, what = min(options.n, 8), f"class{label}"
    generator = torch.Generator().manual_seed(options.seed)
    images = model.sample(labels, guidance, options.sampler, options.steps, options.eta, generator,
                          progress=True)
    steps = (f"ddpm{model.diffusion.num_timesteps}" if options.sampler == "ddpm"
             else f"ddim{options.steps}_eta{options.eta:g}")
    name = f"samples_{what}_guidance{guidance:g}_{steps}_seed{options.seed}.png"
    return save_grid(images, options.out or run / name, nrow=nrow)
