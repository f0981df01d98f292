"""The KL autoencoder of latent diffusion: shapes for f=4/8, the paper's configs, KL and loss
written out, a tiny trained round trip, and the optional patch discriminator with its adaptive
weight."""

from __future__ import annotations

import pytest
import torch

from nerfx.data.shapes import load_shapes
from nerfx.models.autoencoder import AutoencoderConfig, DiagonalGaussian
from tests.models.latent_models import tiny_ae

# ---------------------------------------------------------------------------------------------
# the autoencoder


@pytest.mark.parametrize("factor, ch_mult, z", [(4, (1, 2, 2), 3), (8, (1, 2, 2, 2), 4)])
def test_autoencoder_shapes(factor, ch_mult, z):
    ae = tiny_ae(resolution=32, ch_mult=ch_mult, z_channels=z)
    assert ae.config.factor == factor and ae.config.latent_resolution == 32 // factor
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.std.shape == (2, z, 32 // factor, 32 // factor)
    assert ae.decode(posterior.sample()).shape == (2, 3, 32, 32)
    assert ae.reconstruct(x).abs().max() <= 1.0


def test_paper_autoencoder_configs():
    f4, f8 = AutoencoderConfig.kl_f4(resolution=256), AutoencoderConfig.kl_f8(resolution=256)
    assert (f4.factor, f4.z_channels, f4.latent_resolution) == (4, 3, 64)   # KL-f4: 64x64x3
    assert (f8.factor, f8.z_channels, f8.latent_resolution) == (8, 4, 32)   # KL-f8: 32x32x4
    assert f4.kl_weight == 1e-6
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderConfig.kl_f8(resolution=20)
    with pytest.raises(ValueError, match="expects"):
        tiny_ae().encode(torch.zeros(1, 3, 32, 32))


def test_diagonal_gaussian_kl_and_sample():
    mean = torch.tensor([0.5, -1.0, 0.0, 2.0]).view(1, 4, 1, 1)
    logvar = torch.tensor([0.0, -1.0, 1.0, 0.5]).view(1, 4, 1, 1)
    q = DiagonalGaussian(torch.cat([mean, logvar], 1))
    expected = sum(0.5 * (m ** 2 + torch.exp(lv) - 1 - lv)
                   for m, lv in zip(mean.flatten(), logvar.flatten(), strict=True))
    torch.testing.assert_close(q.kl(), expected.view(1))
    noise = torch.randn(1, 4, 1, 1)
    torch.testing.assert_close(q.sample(noise=noise), mean + torch.exp(0.5 * logvar) * noise)
    assert DiagonalGaussian(torch.zeros(1, 8, 2, 2)).kl().item() == 0.0   # q = prior


def test_autoencoder_loss_is_the_formula():
    """Σ(|x - x̂| / e^s + s) / B + 1e-6 Σ KL / B, with the learned s [contperceptual.py]."""
    ae = tiny_ae()
    with torch.no_grad():
        ae.logvar.fill_(0.3)
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    noise = torch.randn(3, 3, 4, 4)
    out = ae.loss(x, noise=noise)
    q = ae.encode(x)
    recon = ae.decode(q.mean + q.std * noise)
    nll = ((x - recon).abs() / torch.exp(torch.tensor(0.3)) + 0.3).sum() / 3
    torch.testing.assert_close(out.loss, nll + 1e-6 * q.kl().sum() / 3)
    torch.testing.assert_close(out.l1, (x - recon).abs().mean())
    out.loss.backward()
    assert ae.logvar.grad is not None and ae.logvar.grad.abs() > 0


def test_tiny_autoencoder_round_trip():
    """100 steps on 16 shapes images: reconstructions (at the posterior mean) beat the best
    constant image (the per-pixel mean), which the untrained autoencoder does not."""
    x = load_shapes("train", size=16, n=16).as_float()
    ae = tiny_ae()
    baseline = (x - x.mean(0)).abs().mean().item()
    assert (ae.reconstruct(x) - x).abs().mean().item() > baseline
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3, betas=(0.5, 0.9))
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(0, 16, (16,), generator=g)
        loss = ae.train().loss(x[idx], generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    error = (ae.eval().reconstruct(x) - x).abs().mean().item()
    assert error < 0.65 * baseline, (error, baseline)       # measured: 0.52


# ---------------------------------------------------------------------------------------------
# latent scaling


# ---------------------------------------------------------------------------------------------
# the optional patch-adversarial term


def test_patch_discriminator_and_hinge_loss():
    from nerfx.models.autoencoder import PatchDiscriminator, hinge_d_loss

    torch.manual_seed(0)
    assert PatchDiscriminator(3, 8, n_layers=3)(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert PatchDiscriminator(3, 8, n_layers=2)(torch.randn(2, 3, 16, 16)).shape == (2, 1, 2, 2)
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # ½ (mean(relu(1 - real)) + mean(relu(1 + fake))) = ½ ((0 + 0.5 + 2)/3 + (0 + 1 + 2.5)/3)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))


def test_adaptive_weight_is_the_gradient_norm_ratio():
    from nerfx.models.autoencoder import adaptive_weight

    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 4)
    nll, g = (x @ w).pow(2).sum(), -(x @ w).mean() * 3
    gn = torch.autograd.grad(nll, w, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, w, retain_graph=True)[0].norm()
    assert adaptive_weight(nll, g, w, 0.5).item() == pytest.approx(
        0.5 * (gn / (gg + 1e-4)).item(), rel=1e-5)
    (nll + g).backward()                                      # the graphs were kept
