"""Image metrics: PSNR and SSIM (Wang et al. 2004, 11x11 Gaussian window, sigma 1.5)."""

from __future__ import annotations

import math

import torch


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of images in [0, 1]."""
    mse = torch.mean((pred.float() - target.float()) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM of two [H, W, 3] images in [0, 1] (the window shrinks for tiny images)."""
    size = min(11, pred.shape[0], pred.shape[1])
    size -= 1 - size % 2  # odd
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2).expand(3, 1, size, size)

    def blur(x):
        return torch.nn.functional.conv2d(x, window, groups=3)

    x = pred.float().permute(2, 0, 1)[None]
    y = target.float().permute(2, 0, 1)[None]
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(value.mean())
