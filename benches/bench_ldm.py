"""Latent diffusion (nerfx.models.ldm): the latent U-Net's training step and guided DDIM sampling,
images per second, nerfx per attention backend beside diffusers' UNet2DConditionModel of the same
size (skipped when diffusers is not installed: `pip install diffusers`).

The models are the ldm trainer's presets (nerfx.trainers.ldm.PRESETS), 10 classes: on a GPU
"gpu" (32 x 32 images, KL-f4 to 8 x 8 x 3 latents; U-Net 256 channels, multipliers 1,2,4, two
blocks per level, spatial transformers with 32-channel heads at every level and the middle,
class embedding 512) at batch 128, in bf16 autocast and in fp32 (a row each); on the CPU "cpu"
(16 x 16 images, 4 x 4 x 4 latents; U-Net 32 channels, 1,2, one block, 16-channel heads, class
embedding 64) at batch 64 for training, 4 for sampling, fp32.

Rows: `torch`, `sdpa`, `triton` are nerfx's LatentUNet with that attention backend
(nerfx.ops.use_backend; `torch` is the reference row). `diffusers` is UNet2DConditionModel with
the same channels, multipliers, blocks per level, heads of the same width, one transformer layer
per attention level (CrossAttnDown/UpBlock2D, UNetMidBlock2DCrossAttn) cross-attending to the
same one-token learned class embedding (its feed-forward is GEGLU where nerfx's is GELU); each
row's parameter count is in extra_info["params"].

- Training step, as the trainer's latent phase: labels dropped to the null class with p 0.1,
  x_t, ε-MSE, backward, gradient clipping at 1, AdamW; the latents are given (the trainer caches
  the frozen encoder's moments), so the autoencoder is not in the step.
- Sampling: 50 DDIM steps (η = 0) with classifier-free guidance 3 (conditional and null halves
  as one batch of 2B), then nerfx's decoder (auto backend, also for the diffusers row: the
  autoencoder is not what is compared). nerfx: LatentDiffusion.sample_latents; diffusers: its
  DDIMScheduler loop on the same schedule.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from benches.helpers import PRECISIONS, autocast, devices, require_precision, run_benchmark
from nerfx.models.guidance import drop_labels
from nerfx.models.ldm import LDMConfig
from nerfx.ops import BackendError, use_backend
from nerfx.ops.attention import BACKENDS as ATTENTION_BACKENDS
from nerfx.trainers.ldm import PRESETS, build_model

NERFX_IMPLS = ["triton", "sdpa", "torch"]
NUM_CLASSES = 10
STEPS, GUIDANCE = 50, 3.0
CPU_SAMPLE_BATCH = 4


def setting(device: str) -> tuple[dict, int, str]:
    """(trainer preset, training batch, label) of this device."""
    if device == "cuda":
        return PRESETS["gpu"], PRESETS["gpu"]["batch_size"], "gpu preset 8x8x3 latents"
    return PRESETS["cpu"], PRESETS["cpu"]["batch_size"], "cpu preset 4x4x4 latents"


def require_nerfx_backend(impl: str, device: str, head_dim: int,
                          dtype: torch.dtype) -> None:
    if impl == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is a test tool, not a benchmark")
    try:
        ATTENTION_BACKENDS.select(impl, torch.device(device), (dtype,), (head_dim,))
    except BackendError as exc:
        pytest.skip(str(exc))


class DiffusersLatentUNet(nn.Module):
    """diffusers' UNet2DConditionModel sized as nerfx's LatentUNet, with the same learned class
    embedding as its one-token context: forward(z [B, C, r, r], t, y [B]) -> ε̂ [B, C, r, r]."""

    def __init__(self, c: LDMConfig):
        super().__init__()
        from diffusers import UNet2DConditionModel

        u = c.unet
        widths = tuple(u.ch * m for m in u.ch_mult)
        attn = [u.resolution >> i in u.attn_resolutions for i in range(len(u.ch_mult))]
        self.unet = UNet2DConditionModel(
            sample_size=u.resolution, in_channels=u.in_channels, out_channels=u.out_channels,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            mid_block_type="UNetMidBlock2DCrossAttn",
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D"
                                 for a in reversed(attn)),
            block_out_channels=widths, layers_per_block=u.num_res_blocks,
            norm_num_groups=u.num_groups, norm_eps=1e-6, cross_attention_dim=c.context_dim,
            transformer_layers_per_block=c.transformer_depth,
            # diffusers reads attention_head_dim as the number of heads (its issue 2011)
            attention_head_dim=tuple(max(1, w // c.head_channels) for w in widths))
        self.class_embed = nn.Embedding(c.num_classes + 1, c.context_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=self.class_embed(y)[:, None]).sample


def build(impl: str, device: str, precision: str):
    """(LatentDiffusion, the U-Net trained/sampled in this row)."""
    dtype = require_precision(device, precision)
    settings, _, _ = setting(device)
    if impl in NERFX_IMPLS:
        require_nerfx_backend(impl, device, settings["head_channels"], dtype)
    ldm = build_model(settings, 3, settings["image_size"], NUM_CLASSES).to(device)
    ldm.autoencoder.eval().requires_grad_(False)
    if impl == "diffusers":
        try:
            import diffusers  # noqa: F401
        except ImportError as exc:
            pytest.skip(f"diffusers cannot be imported ({exc}): pip install diffusers")
        return ldm, DiffusersLatentUNet(ldm.config).to(device)
    return ldm, ldm.unet


def nerfx_context(impl: str):
    return use_backend(impl) if impl in NERFX_IMPLS else contextlib.nullcontext()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", [*NERFX_IMPLS, "diffusers"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ldm_train_step(benchmark, device, impl, precision):
    ldm, unet = build(impl, device, precision)
    _, batch, label = setting(device)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    gen = torch.Generator(device).manual_seed(0)
    z0 = torch.randn((batch, *ldm.latent_shape), generator=gen, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen, device=device)
    c, diffusion = ldm.config, ldm.diffusion

    def loss() -> torch.Tensor:
        if impl in NERFX_IMPLS:
            return ldm.loss(z0, y, generator=gen)
        labels = drop_labels(y, c.p_uncond, c.null_label, gen)  # what ldm.loss does
        t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=gen, device=device)
        noise = torch.randn(z0.shape, generator=gen, device=device)
        return diffusion.loss(unet, z0, t, noise, model_kwargs={"y": labels})

    def step():
        with nerfx_context(impl), autocast(device, precision):
            value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()

    benchmark.extra_info["params"] = sum(p.numel() for p in unet.parameters())
    run_benchmark(benchmark, step, device, group=f"ldm latent unet train step {device} "
                  f"({label} {precision}, batch {batch})", items=batch, unit="images")


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", [*NERFX_IMPLS, "diffusers"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ldm_sample(benchmark, device, impl, precision):
    ldm, unet = build(impl, device, precision)
    _, batch, label = setting(device)
    batch = batch if device == "cuda" else CPU_SAMPLE_BATCH
    unet.eval()
    gen = torch.Generator(device).manual_seed(0)
    labels = torch.arange(batch, device=device) % NUM_CLASSES

    if impl in NERFX_IMPLS:
        def latents() -> torch.Tensor:
            with use_backend(impl):
                return ldm.sample_latents(labels, GUIDANCE, "ddim", STEPS, generator=gen)
    else:
        from diffusers import DDIMScheduler

        d = ldm.config.diffusion  # the same schedule; latents are not clipped
        scheduler = DDIMScheduler(num_train_timesteps=d.timesteps, beta_start=d.beta_start,
                                  beta_end=d.beta_end, beta_schedule="linear",
                                  clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="leading")
        scheduler.set_timesteps(STEPS)
        null = torch.full_like(labels, ldm.config.null_label)

        @torch.no_grad()
        def latents() -> torch.Tensor:
            z = torch.randn((batch, *ldm.latent_shape), generator=gen, device=device)
            for t in scheduler.timesteps:
                cond, uncond = unet(torch.cat([z, z]), t.to(device),
                                    torch.cat([labels, null])).chunk(2)
                eps = uncond + GUIDANCE * (cond - uncond)
                z = scheduler.step(eps, t, z, eta=0.0).prev_sample
            return z

    def sample() -> torch.Tensor:
        with autocast(device, precision):
            return ldm.decode(latents())

    benchmark.extra_info["params"] = sum(p.numel() for p in unet.parameters())
    run_benchmark(benchmark, sample, device, group=f"ldm sample ddim {STEPS} steps guidance "
                  f"{GUIDANCE:g} {device} ({label}, batch {batch})", items=batch, unit="images")
