"""The VAE: ELBO terms against hand computations and Monte Carlo, the whole loss against the
formulas written out, shapes and errors, seeded sampling, and a tiny CPU run whose loss falls."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.data.shapes import load_shapes
from nerfx.models.vae import (
    MIN_LOGVAR,
    VAE,
    VAEConfig,
    bernoulli_log_likelihood,
    gaussian_kl,
    gaussian_log_likelihood,
)


def test_kl_by_hand():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    # ½[(1 + 1 - 1 - 0) + (0 + 4 - 1 - ln 4)] = ½ (4 - ln 4)
    assert gaussian_kl(mu, logvar).item() == pytest.approx(0.5 * (4 - math.log(4)), rel=1e-6)
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max().item() == 0


def test_kl_against_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.tensor([[0.7, -1.2, 0.1]]), torch.tensor([[-0.5, 0.8, -2.0]])
    z = mu + torch.exp(0.5 * logvar) * torch.randn(200_000, 3, generator=g)
    log_q = (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 / logvar.exp())).sum(1)
    log_p = (-0.5 * (math.log(2 * math.pi) + z ** 2)).sum(1)
    assert gaussian_kl(mu, logvar).item() == pytest.approx((log_q - log_p).mean().item(),
                                                           abs=0.02)


def test_likelihoods_by_hand():
    x = torch.tensor([[1.0, 0.0, 0.5]])
    logits = torch.tensor([[0.0, math.log(3.0), 0.0]])  # p = 0.5, 0.75, 0.5
    expected = math.log(0.5) + math.log(0.25) + 0.5 * math.log(0.5) + 0.5 * math.log(0.5)
    assert bernoulli_log_likelihood(x, logits).item() == pytest.approx(expected, rel=1e-6)
    # N(1; 0, 1) and N(0.5; 0.5, e^-2) in nats
    got = gaussian_log_likelihood(torch.tensor([[1.0, 0.5]]), torch.tensor([[0.0, 0.5]]),
                                  torch.tensor([[0.0, -2.0]]))
    expected = -0.5 * (math.log(2 * math.pi) + 1) - 0.5 * (math.log(2 * math.pi) - 2)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("likelihood,std", [("bernoulli", None), ("gaussian", 0.2),
                                            ("gaussian", None)])
def test_elbo_against_the_formulas(likelihood, std):
    torch.manual_seed(0)
    vae = VAE(VAEConfig.tiny(likelihood=likelihood, gaussian_std=std, beta=2.5))
    x = torch.rand(3, 3, 16, 16)
    eps = torch.randn(3, 8)
    out = vae.loss(x, noise=eps)
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    dec = vae.decode(z)
    if likelihood == "bernoulli":
        p = torch.sigmoid(dec)
        log_px = (x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum((1, 2, 3))
    else:
        mean = dec[:, :3]
        if std is None:
            lv = MIN_LOGVAR + torch.nn.functional.softplus(dec[:, 3:] - MIN_LOGVAR)
            var = lv.exp()
        else:
            var = torch.full_like(x, std ** 2)
        log_px = (-0.5 * torch.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)).sum((1, 2, 3))
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    torch.testing.assert_close(out.recon, -log_px, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(out.kl, kl)
    torch.testing.assert_close(out.elbo, log_px - kl, rtol=1e-5, atol=1e-3)
    assert out.loss.item() == pytest.approx((-log_px + 2.5 * kl).mean().item(), rel=1e-5)


def test_reparameterisation_carries_gradients():
    vae = VAE(VAEConfig.tiny())
    x = torch.rand(2, 3, 16, 16)
    vae.loss(x, generator=torch.Generator().manual_seed(0)).recon.sum().backward()
    assert vae.to_stats.weight.grad.abs().sum() > 0  # through z = μ + σ ε into the encoder


def test_shapes_sampling_and_errors():
    vae = VAE(VAEConfig.mnist())
    x = torch.rand(4, 1, 28, 28)
    assert vae.reconstruct(x).shape == (4, 1, 28, 28)
    s = vae.sample(5, torch.Generator().manual_seed(1))
    assert s.shape == (5, 1, 28, 28) and 0 <= s.min() and s.max() <= 1
    torch.testing.assert_close(s, vae.sample(5, torch.Generator().manual_seed(1)), rtol=0, atol=0)
    assert not torch.allclose(s, vae.sample(5, torch.Generator().manual_seed(2)))
    line = vae.interpolate(x[0], x[1], 6)
    assert line.shape == (6, 1, 28, 28)
    torch.testing.assert_close(line[0], vae.reconstruct(x[:1])[0])
    torch.testing.assert_close(line[-1], vae.reconstruct(x[1:2])[0])
    with pytest.raises(ValueError, match=r"expects \[B, 1, 28, 28\].*got \(2, 1, 32, 32\)"):
        vae.loss(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        VAEConfig(resolution=28, channels=(32, 64, 128))
    with pytest.raises(ValueError, match="likelihood"):
        VAEConfig(likelihood="poisson")
    g = VAE(VAEConfig.tiny(likelihood="gaussian"))
    assert g.sample(2).shape == (2, 3, 16, 16)  # the means, not the log-variances


@pytest.mark.parametrize("likelihood,std", [("bernoulli", None), ("gaussian", 0.1)])
def test_tiny_training_loss_falls(likelihood, std):
    torch.manual_seed(0)
    vae = VAE(VAEConfig.tiny(likelihood=likelihood, gaussian_std=std))
    data = load_shapes("train", size=16, n=512)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(8):
        for x, _ in data.batches(32, g, value_range=(0, 1)):
            out = vae.loss(x, generator=g)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            if likelihood == "bernoulli":  # count what lies above the pixels' own entropy
                xc = x.clamp(1e-6, 1 - 1e-6)
                floor = -(xc * xc.log() + (1 - xc) * (1 - xc).log()).sum((1, 2, 3)).mean()
                losses.append(out.loss.item() - floor.item())
            else:
                losses.append(out.loss.item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < (0.9 * first if likelihood == "bernoulli" else 0.25 * first), (first, last)
    if likelihood == "bernoulli":  # reconstructions beat the data's mean image
        x = data.as_float((0, 1), slice(0, 128))
        err = (vae.reconstruct(x) - x).pow(2).mean()
        assert err < 0.85 * (x.mean(0, keepdim=True) - x).pow(2).mean()
