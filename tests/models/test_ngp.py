"""The Instant-NGP field: paper sizes, spherical harmonics, truncated exp, gradients."""

from __future__ import annotations

import math

import torch

from nerfx.models.ngp import InstantNGP, NGPConfig, spherical_harmonics, trunc_exp


def test_paper_sizes():
    model = InstantNGP([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    assert model.encoding.output_dim == 32
    assert model.encoding.layout.resolutions[-1] == 2048
    assert model.density_mlp[0].in_features == 32 and model.density_mlp[-1].out_features == 16
    assert model.color_mlp[0].in_features == 32
    mlp_params = sum(p.numel() for n, p in model.named_parameters() if "mlp" in n)
    assert mlp_params < 10_000  # tiny MLPs; the hash table holds the capacity


def test_spherical_harmonics_are_orthonormal():
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=gen,
                                                  dtype=torch.float64), dim=-1)
    sh = spherical_harmonics(d)  # [N, 16]
    gram = sh.T @ sh / d.shape[0] * 4 * math.pi  # Monte Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0)


def test_trunc_exp_clamps_only_the_gradient():
    x = torch.tensor([0.0, 10.0, 30.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.exp(torch.tensor([0.0, 10.0, 15.0])))


def test_forward_and_gradients():
    model = InstantNGP([0, 0, 0, 1, 1, 1], NGPConfig(log2_hashmap_size=12))
    x = torch.rand(257, 3)
    d = torch.randn(257, 3)
    sigma, rgb = model(x, d)
    assert sigma.shape == (257,) and rgb.shape == (257, 3)
    assert (sigma > 0).all() and ((rgb > 0) & (rgb < 1)).all()
    (sigma.sum() + rgb.sum()).backward()
    assert model.encoding.params.grad.abs().sum() > 0
    torch.testing.assert_close(model.density(x), sigma.detach())
