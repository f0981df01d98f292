"""DDPM U-Net training steps and DDIM sampling, images per second: nerfx per attention backend
beside the same-sized U-Nets of `diffusers` and `denoising-diffusion-pytorch` (skipped when not
installed: `pip install diffusers denoising-diffusion-pytorch`).

Rows: `torch`, `sdpa`, `triton` are nerfx's U-Net (nerfx.models.unet) with that attention backend
(nerfx.ops.use_backend; `torch` is the reference row); `diffusers` is a UNet2DModel configured as
diffusers' own google/ddpm-cifar10-32 port (same channels, multipliers, blocks per level,
single-head attention at the same resolutions and in the middle, GroupNorm groups, dropout);
`ddpm-pytorch` is denoising-diffusion-pytorch's Unet with the same dim, dim_mults and dropout,
full attention (flash_attn, i.e. SDPA) where nerfx has attention. That Unet always has two
blocks per level and linear attention at the other levels, so it is the peer's model of that
configuration, not a copy of nerfx's: each row's parameter count is in its extra_info["params"].

- Training step: x_t from nerfx's q_sample, ε-MSE, backward, Adam; the same step for every model.
  GPU: the paper's CIFAR-10 model (UNetConfig.cifar10(), 35.7M parameters) at 32 x 32, batch 128,
  in bf16 autocast and in fp32, a row each (its single-head attention has head dim 256, beyond
  the triton kernels' 128: that row skips with the reason). CPU: UNetConfig.tiny() at 16 x 16,
  batch 16, fp32.
- DDIM sampling, 50 steps, η = 0, no_grad, eval mode: nerfx's DDIMSampler per attention backend;
  `diffusers-scheduler`: the same nerfx model (auto backend) stepped by diffusers' DDIMScheduler
  (the samplers' overhead side by side); `diffusers`: UNet2DModel with DDIMScheduler;
  `ddpm-pytorch`: its GaussianDiffusion.sample with 50 DDIM steps. GPU batch 128, CPU batch 2.
"""

from __future__ import annotations

import contextlib
import importlib

import pytest
import torch

from benches.helpers import PRECISIONS, autocast, devices, require_precision, run_benchmark
from nerfx.models.ddim import DDIMConfig, DDIMSampler
from nerfx.models.ddpm import DiffusionConfig, GaussianDiffusion
from nerfx.models.unet import UNet, UNetConfig
from nerfx.ops import BackendError, use_backend
from nerfx.ops.attention import BACKENDS as ATTENTION_BACKENDS

NERFX_IMPLS = ["triton", "sdpa", "torch"]
PEERS = {"diffusers": ("diffusers", "diffusers"),
         "ddpm-pytorch": ("denoising_diffusion_pytorch", "denoising-diffusion-pytorch")}
STEPS = 50  # DDIM sampling steps
GPU_BATCH, CPU_BATCH, CPU_SAMPLE_BATCH = 128, 16, 2


def setting(device: str) -> tuple[UNetConfig, str]:
    """The U-Net benchmarked on this device and its label."""
    if device == "cuda":
        return UNetConfig.cifar10(), "cifar10 32px"
    return UNetConfig.tiny(), "tiny 16px"


def head_dims(c: UNetConfig) -> set[int]:
    """Head dims of the U-Net's attention layers: the attention levels' widths and the middle's."""
    widths = {c.ch * m for i, m in enumerate(c.ch_mult) if c.resolution >> i in c.attn_resolutions}
    return {w // c.attn_heads for w in {*widths, c.ch * c.ch_mult[-1]}}


def require_nerfx_backend(impl: str, device: str, dims: set[int],
                          dtype: torch.dtype) -> None:
    """Skips (with the dispatcher's reason) when the attention backend cannot serve these sizes."""
    if impl == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is a test tool, not a benchmark")
    for d in sorted(dims):
        try:
            ATTENTION_BACKENDS.select(impl, torch.device(device), (dtype,), (d,))
        except BackendError as exc:
            pytest.skip(str(exc))


def require_peer(impl: str):
    """The peer's module, or a skip saying why it cannot be imported."""
    module, package = PEERS[impl]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{package} cannot be imported ({exc}): pip install {package}")


def diffusers_unet(c: UNetConfig):
    """UNet2DModel of nerfx's configuration, as diffusers' port of google/ddpm-cifar10-32."""
    from diffusers import UNet2DModel

    if c.attn_heads != 1:
        raise ValueError("diffusers_unet maps single-head attention only")
    attn = [c.resolution >> i in c.attn_resolutions for i in range(len(c.ch_mult))]
    return UNet2DModel(
        sample_size=c.resolution, in_channels=c.in_channels, out_channels=c.out_channels,
        block_out_channels=tuple(c.ch * m for m in c.ch_mult), layers_per_block=c.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        attention_head_dim=None, norm_num_groups=c.num_groups, norm_eps=1e-6, dropout=c.dropout,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)


def ddpm_pytorch_unet(c: UNetConfig):
    """denoising-diffusion-pytorch's Unet with nerfx's dim, dim_mults and dropout; full (SDPA)
    attention at nerfx's attention resolutions, its linear attention elsewhere."""
    from denoising_diffusion_pytorch import Unet

    full = tuple(c.resolution >> i in c.attn_resolutions for i in range(len(c.ch_mult)))
    return Unet(dim=c.ch, dim_mults=tuple(c.ch_mult), channels=c.in_channels,
                dropout=c.dropout, flash_attn=True, full_attn=full)


def build(impl: str, c: UNetConfig, device: str) -> tuple[torch.nn.Module, callable]:
    """(module, predict(x_t [B, C, R, R], t [B] or scalar) -> ε̂) for a row."""
    if impl in PEERS:
        require_peer(impl)
    if impl == "diffusers":
        model = diffusers_unet(c).to(device)
        return model, lambda x, t: model(x, t).sample
    if impl == "ddpm-pytorch":
        model = ddpm_pytorch_unet(c).to(device)
        return model, lambda x, t: model(x, t.expand(x.shape[0]) if t.dim() == 0 else t)
    model = UNet(c).to(device)
    return model, model


def nerfx_context(impl: str):
    return use_backend(impl) if impl in NERFX_IMPLS else contextlib.nullcontext()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", [*NERFX_IMPLS, *PEERS])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ddpm_train_step(benchmark, device, impl, precision):
    dtype = require_precision(device, precision)
    config, label = setting(device)
    if impl in NERFX_IMPLS:
        require_nerfx_backend(impl, device, head_dims(config), dtype)
    model, predict = build(impl, config, device)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)  # [DDPM: Adam 2e-4]
    diffusion = GaussianDiffusion(DiffusionConfig())
    batch = GPU_BATCH if device == "cuda" else CPU_BATCH
    gen = torch.Generator(device).manual_seed(0)
    shape = (batch, config.in_channels, config.resolution, config.resolution)
    x0 = torch.rand(shape, generator=gen, device=device) * 2 - 1
    noise = torch.randn(shape, generator=gen, device=device)
    t = torch.randint(0, diffusion.num_timesteps, (batch,), generator=gen, device=device)

    def step():
        with nerfx_context(impl), autocast(device, precision):
            loss = diffusion.loss(predict, x0, t, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.extra_info["params"] = sum(p.numel() for p in model.parameters())
    run_benchmark(benchmark, step, device, group=f"ddpm unet train step {device} "
                  f"({label} {precision}, batch {batch})", items=batch, unit="images")


def ddim_scheduler():
    """diffusers' DDIMScheduler on DDPM's schedule (T 1000, linear 1e-4 -> 0.02), clipping x̂_0
    as nerfx's DiffusionConfig does, leading spacing (nerfx's uniform τ)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                              beta_schedule="linear", clip_sample=True, set_alpha_to_one=True,
                              timestep_spacing="leading")
    scheduler.set_timesteps(STEPS)
    return scheduler


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", [*NERFX_IMPLS, "diffusers-scheduler", *PEERS])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_ddim_sample(benchmark, device, impl, precision):
    dtype = require_precision(device, precision)
    config, label = setting(device)
    batch = GPU_BATCH if device == "cuda" else CPU_SAMPLE_BATCH
    shape = (batch, config.in_channels, config.resolution, config.resolution)
    gen = torch.Generator(device).manual_seed(0)
    if impl in NERFX_IMPLS:
        require_nerfx_backend(impl, device, head_dims(config), dtype)
    if impl == "diffusers-scheduler":
        require_peer("diffusers")
    model, predict = build("sdpa" if impl == "diffusers-scheduler" else impl, config, device)
    model.eval()

    if impl in NERFX_IMPLS:
        sampler = DDIMSampler(GaussianDiffusion(DiffusionConfig()), DDIMConfig(steps=STEPS))

        def sample():
            with nerfx_context(impl), autocast(device, precision):
                return sampler.sample(predict, shape, gen, device)
    elif impl == "ddpm-pytorch":
        from denoising_diffusion_pytorch import GaussianDiffusion as PeerDiffusion

        peer = PeerDiffusion(model, image_size=config.resolution, timesteps=1000,
                             sampling_timesteps=STEPS, objective="pred_noise",
                             beta_schedule="linear", ddim_sampling_eta=0.0).to(device)

        def sample():
            with torch.no_grad(), autocast(device, precision):
                return peer.sample(batch_size=batch)
    else:  # diffusers' DDIMScheduler loop, around diffusers' U-Net or nerfx's
        scheduler = ddim_scheduler()

        def sample():
            x = torch.randn(shape, generator=gen, device=device)
            with torch.no_grad(), autocast(device, precision):
                for t in scheduler.timesteps:
                    eps = predict(x, t.to(device))
                    x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            return x

    benchmark.extra_info["params"] = sum(p.numel() for p in model.parameters())
    run_benchmark(benchmark, sample, device, group=f"ddim sample {STEPS} steps {device} "
                  f"({label} {precision}, batch {batch})", items=batch, unit="images")
