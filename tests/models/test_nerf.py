"""The original NeRF: encoding, the paper's network sizes, hierarchical sampling, rendering."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx.models.nerf import NeRF, NeRFConfig, NeRFField, positional_encoding, sample_pdf
from nerfx.ops import use_backend
from nerfx.ref.composite import composite_rays_padded


def test_positional_encoding_values():
    x = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64)
    out = positional_encoding(x, 2)  # [1, 3 * 5]
    assert out.shape == (1, 15)
    expected = [0.3, -1.2, 2.0] + [math.sin(v) for v in (0.3, -1.2, 2.0)] + \
        [math.sin(2 * v) for v in (0.3, -1.2, 2.0)] + [math.cos(v) for v in (0.3, -1.2, 2.0)] + \
        [math.cos(2 * v) for v in (0.3, -1.2, 2.0)]
    torch.testing.assert_close(out[0], torch.tensor(expected, dtype=torch.float64))


def test_field_has_the_papers_sizes():
    field = NeRFField(NeRFConfig())
    assert len(field.layers) == 8
    assert field.layers[0].in_features == 63 and field.layers[5].in_features == 256 + 63
    assert all(layer.out_features == 256 for layer in field.layers)
    assert field.view.in_features == 256 + 27 and field.view.out_features == 128
    sigma, rgb = field(torch.randn(5, 3), torch.nn.functional.normalize(torch.randn(5, 3), dim=-1))
    assert sigma.shape == (5,) and rgb.shape == (5, 3)
    assert bool((sigma >= 0).all()) and bool(((rgb > 0) & (rgb < 1)).all())


def test_sample_pdf_follows_the_weights():
    bins = torch.linspace(0, 4, 5).expand(3, 5)  # four unit bins
    weights = torch.tensor([[0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    t = sample_pdf(bins, weights, 64)
    assert t.shape == (3, 64)
    assert bool((t[:, 1:] >= t[:, :-1]).all())  # sorted
    assert (((t[0] >= 2) & (t[0] <= 3)).float().mean()) > 0.95  # all mass in the third bin
    for row in (1, 2):  # uniform (no weight falls back to uniform): evenly spread over [0, 4]
        torch.testing.assert_close(t[row], torch.linspace(0, 4, 64), atol=1e-3, rtol=0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_pdf(bins, weights, 16, g1, perturb=True)
    b = sample_pdf(bins, weights, 16, g2, perturb=True)
    assert torch.equal(a, b) and not torch.equal(a, sample_pdf(bins, weights, 16))
    assert bool(((a >= 0) & (a <= 4)).all())


class _Slab(torch.nn.Module):
    """An analytic field: density 1000 and colour (1, 0, 0) where |x| < 0.17, empty elsewhere."""

    def forward(self, x, d):
        inside = (x[:, 0].abs() < 0.17).float()
        rgb = torch.stack([torch.ones_like(inside), torch.zeros_like(inside),
                           torch.zeros_like(inside)], -1)
        return 1000.0 * inside, rgb


def test_render_finds_the_surface_and_blends_the_background():
    nerf = NeRF([-1, -1, -1, 1, 1, 1], NeRFConfig(n_coarse=32, n_fine=64))
    nerf.coarse, nerf.fine = _Slab(), _Slab()
    o = torch.tensor([[-3.0, 0.1, 0.0], [0.0, 3.0, 0.5], [-3.0, 5.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # slab, miss, outside
    background = torch.tensor([0.0, 0.0, 1.0])
    coarse, fine = nerf(o, d, background=background)
    assert fine.opacity[0] > 0.999 and fine.opacity[2] == 0
    torch.testing.assert_close(fine.color[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(fine.color[2], background)
    # Ray 1 runs inside the slab (x = 0) from the box's face: it is red from y = 1.
    assert fine.opacity[1] > 0.999 and abs(fine.depth[1].item() - 2.0) < 0.1
    # The entry at x = -0.17 is t = 2.83, between coarse samples 1/16 apart: the fine samples,
    # drawn where the coarse weights are, put the depth closer to it.
    assert abs(coarse.depth[0].item() - 2.83) > 0.03
    assert abs(fine.depth[0].item() - 2.83) < 0.015


def test_composite_matches_padded_reference():
    torch.manual_seed(0)
    nerf = NeRF([-1, -1, -1, 1, 1, 1], NeRFConfig(n_coarse=8, n_fine=8, width=32))
    o = torch.tensor([[0.0, 0.0, -3.0], [0.3, -0.2, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    with use_backend("torch"):
        coarse, _ = nerf(o, d)
    t = torch.linspace(-1, 1, 9)[:-1] + 1 / 8 + 3.0  # bin centres of the [2, 4] segment
    t_end = torch.cat([t[1:], torch.tensor([4.0])])
    points = o[:, None] + d[:, None] * (0.5 * (t + t_end))[None, :, None]
    sigma, rgb = nerf.coarse(points.reshape(-1, 3), d.repeat_interleave(8, 0))
    padded = composite_rays_padded(sigma.view(2, 8), rgb.view(2, 8, 3), t.expand(2, 8),
                                   t_end.expand(2, 8), torch.ones(2, 8, dtype=torch.bool))
    torch.testing.assert_close(coarse.color, padded.color, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(coarse.depth, padded.depth, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_training_lowers_the_loss(backend):
    torch.manual_seed(0)
    nerf = NeRF([-1, -1, -1, 1, 1, 1], NeRFConfig(n_coarse=16, n_fine=16, width=64))
    optimizer = torch.optim.Adam(nerf.parameters(), lr=5e-3)
    o = torch.randn(128, 3)
    o = 3 * o / o.norm(dim=-1, keepdim=True)
    d = torch.nn.functional.normalize(0.3 * torch.randn(128, 3) - o, dim=-1)
    target = torch.where((o[:, :1] > 0), torch.tensor([0.9, 0.2, 0.1]), torch.tensor([0.1, 0.3,
                                                                                      0.8]))
    losses = []
    for _ in range(60):
        with use_backend(backend):
            coarse, fine = nerf(o, d, background=torch.ones(3), perturb=True)
        loss = ((coarse.color - target) ** 2).mean() + ((fine.color - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in nerf.fine.parameters())
        assert all(p.grad is not None for p in nerf.coarse.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
