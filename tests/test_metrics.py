"""PSNR and SSIM on cases with known answers."""

import math

import torch

from nerfx.metrics import psnr, ssim


def test_psnr_and_ssim():
    img = torch.rand(32, 40, 3, generator=torch.Generator().manual_seed(0))
    assert psnr(img, img) == math.inf and math.isclose(ssim(img, img), 1.0, rel_tol=1e-5)
    assert math.isclose(psnr(img, (img + 0.1).clamp(max=10)), 20.0, rel_tol=1e-5)
    noisy = (img + 0.2 * torch.randn(img.shape, generator=torch.Generator().manual_seed(1)))
    assert ssim(img, noisy.clamp(0, 1)) < 0.9
    assert 0 < ssim(img[:6, :6], img[:6, :6] * 0.5) < 1  # tiny images shrink the window
