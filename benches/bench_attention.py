"""Attention, bf16, forward and forward+backward: nerfx's triton kernels beside SDPA's flash,
cuDNN, memory-efficient and math backends, SDPA's own choice and the fp32 reference (`torch`).

Shapes on a GPU: ViT-B/16 (B=256, H=12, N=197, D=64), a diffusion U-Net's 32 x 32
attention (B=32, H=8, N=1024, D=64), long sequences (B=8, H=8, N=4096, D=64, also causal) and
D=128 (B=16, H=16, N=1024); a small ViT-like shape on the CPU (the Triton interpreter is not
benchmarked). Throughput is in TFLOP/s counted as flash-attention does (4·B·H·N²·D forward,
3.5x that forward+backward, half when causal). Also a ViT training step per attention backend,
in bf16 autocast and in fp32 on a GPU, beside timm's ViT of the same size.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from benches.helpers import PRECISIONS, autocast, devices, require_precision, run_benchmark
from nerfx.ops import BackendError, attention, use_backend
from nerfx.ops.attention import BACKENDS

# name: (B, H, N, D, causal)
SHAPES = {
    "cuda": {"vit-b16": (256, 12, 197, 64, False), "unet-32x32": (32, 8, 1024, 64, False),
             "long": (8, 8, 4096, 64, False), "long-causal": (8, 8, 4096, 64, True),
             "d128": (16, 16, 1024, 128, False)},
    "cpu": {"vit-small": (2, 6, 197, 64, False)},
}
SDPA_KINDS = {"sdpa-flash": "FLASH_ATTENTION", "sdpa-cudnn": "CUDNN_ATTENTION",
              "sdpa-efficient": "EFFICIENT_ATTENTION", "sdpa-math": "MATH"}
IMPLS = ["triton", *SDPA_KINDS, "sdpa", "torch"]


def flops(batch: int, heads: int, len_q: int, len_k: int, head_dim: int, causal: bool,
          mode: str) -> float:
    """As flash-attention counts: 4·B·H·Lq·Lk·D forward, the backward 2.5x that, half if causal."""
    fwd = 4.0 * batch * heads * len_q * len_k * head_dim * (0.5 if causal else 1.0)
    return fwd * (1.0 if mode == "fwd" else 3.5)


def skip_unless_runnable(impl: str, device: str) -> None:
    """Skips the benchmark, with the reason, where nerfx's backend `impl` cannot run on device."""
    if impl == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is a test tool, not a benchmark")
    try:
        BACKENDS.select(impl, torch.device(device), (torch.bfloat16,), (64,))
    except BackendError as exc:
        pytest.skip(str(exc))


def make_impl(impl: str, device: str):
    """A callable (q, k, v, causal) -> out for this implementation, or a pytest skip."""
    if impl in SDPA_KINDS:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kind = getattr(SDPBackend, SDPA_KINDS[impl])

        def run(q, k, v, causal):
            with sdpa_kernel(kind):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

        return run
    skip_unless_runnable(impl, device)
    return lambda q, k, v, causal: attention(q, k, v, causal=causal, backend=impl)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape", [*SHAPES["cuda"], *SHAPES["cpu"]])
def test_attention(benchmark, device, impl, mode, shape):
    if shape not in SHAPES[device]:
        pytest.skip(f"{shape} is not benchmarked on {device}")
    b, h, n, d, causal = SHAPES[device][shape]
    fn = make_impl(impl, device)
    q, k, v = (torch.randn(b, h, n, d, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    try:  # SDPA's fixed backends refuse some shapes and devices: skip those with the reason
        with torch.no_grad():
            fn(q, k, v, causal)
    except RuntimeError as exc:
        pytest.skip(f"{impl} cannot run {shape} on {device}: {str(exc).splitlines()[0][:200]}")
    grad_out = torch.randn(b, h, n, d, device=device, dtype=torch.bfloat16)

    def forward():
        with torch.no_grad():
            fn(q, k, v, causal)

    def forward_backward():
        torch.autograd.grad(fn(q, k, v, causal), (q, k, v), grad_out)

    tflop = flops(b, h, n, n, d, causal, mode) / 1e12
    run_benchmark(benchmark, forward if mode == "fwd" else forward_backward, device,
                  group=f"attention bf16 {mode} {device} {shape} (B={b} H={h} N={n} D={d}"
                        f"{' causal' if causal else ''})", items=tflop, unit="TFLOP")


# --- a ViT training step per attention backend -----------------------------------------------

def timm_vit(config):
    """timm's VisionTransformer of nerfx's configuration (patch size, width, depth, heads, MLP
    ratio, qkv bias, class token, pre-norm blocks, stochastic depth), or a skip saying why timm
    cannot be imported. Its attention is SDPA (timm's fused_attn)."""
    try:
        from timm.models.vision_transformer import VisionTransformer
    except Exception as exc:  # noqa: BLE001 (missing, or a torchvision built for another torch)
        pytest.skip(f"timm cannot be imported ({exc}): pip install timm")
    return VisionTransformer(img_size=config.image_size, patch_size=config.patch_size,
                             in_chans=config.in_channels, num_classes=config.num_classes,
                             embed_dim=config.dim, depth=config.depth, num_heads=config.heads,
                             mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                             drop_rate=config.dropout, drop_path_rate=config.drop_path)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", ["triton", "sdpa", "torch", "timm"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_vit_train_step(benchmark, device, impl, precision):
    """ViT-B/16 at 224 x 224, batch 64, on a GPU in bf16 autocast and in fp32; a 2-layer
    ViT-Ti/16 at 64 x 64, batch 8, fp32 on the CPU. Images per second of forward, backward and
    AdamW step: nerfx's ViT per attention backend, and timm's of the same size (`timm`)."""
    from nerfx.models.vit import ViT, vit_config

    require_precision(device, precision)
    if device == "cuda":
        config, batch = vit_config("B/16"), 64
    else:
        config, batch = vit_config("Ti/16", image_size=64, depth=2), 8
    if impl == "timm":
        model = timm_vit(config).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        context = contextlib.nullcontext
    else:
        skip_unless_runnable(impl, device)
        model = ViT(config).to(device)
        opt = torch.optim.AdamW(model.param_groups(0.05), lr=1e-4)
        context = lambda: use_backend(impl)  # noqa: E731
    images = torch.randn(batch, 3, config.image_size, config.image_size, device=device)
    labels = torch.randint(0, config.num_classes, (batch,), device=device)

    def step():
        with context(), autocast(device, precision):
            loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    benchmark.extra_info["params"] = sum(p.numel() for p in model.parameters())
    size = "B/16 224px" if device == "cuda" else "Ti/16 2 layers 64px"
    run_benchmark(benchmark, step, device, group=f"vit train step {device} ({size} {precision}, "
                  f"batch {batch})", items=batch, unit="images")
