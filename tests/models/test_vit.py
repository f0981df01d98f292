"""Vision Transformer: the paper's sizes, shapes, position-embedding interpolation, and a tiny
CPU training run whose accuracy rises above chance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nerfx.models.layers import DropPath, TransformerBlock, drop_path
from nerfx.models.vit import ViT, ViTConfig, resize_pos_embed, vit_config
from tests.helpers import outputs_per_attention_backend


def tiny_config(**overrides) -> ViTConfig:
    return ViTConfig(**{"image_size": 16, "patch_size": 4, "num_classes": 4, "dim": 32,
                        "depth": 2, "heads": 2, "drop_path": 0.0, **overrides})


# Parameter counts at 224 x 224 with 1000 classes (timm's vit_*_patch16_224 agree); widths,
# depths and heads from the paper's Table 1 (B, L) and DeiT (Ti, S).
@pytest.mark.parametrize("name,dim,depth,heads,params", [
    ("Ti/16", 192, 12, 3, 5_717_416),
    ("S/16", 384, 12, 6, 22_050_664),
    ("B/16", 768, 12, 12, 86_567_656),
    ("L/16", 1024, 24, 16, 304_326_632),
])
def test_paper_sizes(name, dim, depth, heads, params):
    config = vit_config(name)
    assert (config.dim, config.depth, config.heads, config.mlp_ratio) == (dim, depth, heads, 4.0)
    with torch.device("meta"):
        model = ViT(config)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.blocks[0].mlp.fc1.out_features == 4 * dim
    assert model.pos_embed.shape == (1, 1 + 14 * 14, dim)


def test_config_names():
    assert vit_config("B/32").patch_size == 32
    assert vit_config("S", num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match="unknown size 'XL'"):
        vit_config("XL/16")


def test_shapes_and_features():
    model = ViT(tiny_config())
    images = torch.randn(3, 3, 16, 16)
    assert model(images).shape == (3, 4)
    assert model.features(images).shape == (3, 1 + 16, 32)
    headless = ViT(tiny_config(num_classes=0))
    assert headless(images).shape == (3, 32)
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        model(torch.randn(1, 3, 18, 16))


def test_stochastic_depth_rates_rise_linearly():
    model = ViT(tiny_config(depth=5, drop_path=0.2))
    rates = [block.drop_path.p for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_drop_path_per_sample():
    x = torch.ones(2000, 3, 4)
    y = drop_path(x, 0.25, training=True)
    kept = y[:, 0, 0] != 0
    assert (y[kept] == 1 / 0.75).all() and (y[~kept] == 0).all()  # whole samples, rescaled
    assert abs(kept.float().mean().item() - 0.75) < 0.05
    assert torch.equal(drop_path(x, 0.25, training=False), x)
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_pos_embed_interpolation():
    """Same grid: unchanged; a linear ramp over the grid stays a ramp; other sizes run."""
    model = ViT(tiny_config())
    pos = model.pos_embed.detach()
    assert resize_pos_embed(pos, (4, 4)) is pos
    ramp = torch.arange(4.0)[None, :].expand(4, 4)  # varies along the width only
    ramp_pos = torch.cat([torch.full((1, 1, 1), 7.0), ramp.reshape(1, 16, 1)], dim=1)
    out = resize_pos_embed(ramp_pos, (8, 6))
    assert out.shape == (1, 1 + 48, 1) and out[0, 0, 0] == 7.0  # the class token's is kept
    grid = out[0, 1:, 0].reshape(8, 6)
    torch.testing.assert_close(grid[0], grid[5])  # constant down the columns
    assert (grid[:, 1:] >= grid[:, :-1] - 1e-6).all()  # still increasing across
    assert model(torch.randn(2, 3, 32, 24)).shape == (2, 4)  # 8 x 6 patches
    torch.testing.assert_close(model.pos_embed_for((8, 6)), resize_pos_embed(pos, (8, 6)))


def test_resize_keeps_the_interpolated_embeddings():
    model = ViT(tiny_config()).eval()
    images = torch.randn(2, 3, 24, 24)
    before = model(images)
    model.resize(24)
    assert model.config.image_size == 24 and model.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model(images), before)


def test_the_run_setting_chooses_the_attention_backend(monkeypatch):
    """use_backend("torch") runs the reference attention in every block, "sdpa" torch's SDPA;
    the logits agree."""
    torch.manual_seed(0)
    model = ViT(tiny_config()).eval()
    torch.nn.init.normal_(model.head.weight)  # a non-zero head so the logits differ
    images = torch.randn(2, 3, 16, 16)
    out = outputs_per_attention_backend(monkeypatch, model, lambda: model(images))
    torch.testing.assert_close(out["sdpa"], out["torch"])


def test_transformer_block_cross_attention():
    block = TransformerBlock(32, 4, cross_dim=12)
    x, context = torch.randn(2, 9, 32), torch.randn(2, 5, 12)
    assert block(x, context).shape == (2, 9, 32)
    with pytest.raises(ValueError, match="needs a context"):
        block(x)
    with pytest.raises(ValueError, match="without cross_dim"):
        TransformerBlock(32, 4)(x, context)


def synthetic_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Four classes: a bright 6 x 6 square in one of the four quadrants, on noise.
    -> images [n, 3, 16, 16], labels [n]."""
    labels = torch.randint(0, 4, (n,), generator=generator)
    images = 0.5 * torch.randn(n, 3, 16, 16, generator=generator)
    jitter = torch.randint(0, 3, (n, 2), generator=generator)
    for i, (label, (dy, dx)) in enumerate(zip(labels.tolist(), jitter.tolist(), strict=True)):
        y, x = 8 * (label // 2) + dy, 8 * (label % 2) + dx
        images[i, :, y:y + 6, x:x + 6] += 1.5
    return images, labels


def test_tiny_training_run_beats_chance():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = synthetic_images(512, gen)
    test_x, test_y = synthetic_images(256, gen)
    model = ViT(tiny_config(drop_path=0.1))
    opt = torch.optim.AdamW(model.param_groups(0.05), lr=3e-3)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            return (model(test_x).argmax(-1) == test_y).float().mean().item()

    start = accuracy()
    model.train()
    for _ in range(200):
        idx = torch.randint(0, 512, (64,), generator=gen)
        loss = F.cross_entropy(model(train_x[idx]), train_y[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = accuracy()
    assert start <= 0.4, start  # the zero head starts at chance (0.25)
    assert end >= 0.7, f"test accuracy {end:.2f} after training (chance 0.25)"


def test_sincos_position_embeddings():
    """2-D sine-cosine starts: patch (row r, column c) holds sin/cos of c in the first half and
    of r in the second; the class token's starts at 0; an unknown start is refused."""
    from nerfx.models.vit import sincos_2d

    table = sincos_2d(4, 16)                                              # [16, 16]
    assert table.shape == (16, 16)
    torch.testing.assert_close(table[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4
                                                      + [1.0] * 4))
    torch.testing.assert_close(table[1, 0], torch.tensor(1.0).sin())      # column 1, first freq
    torch.testing.assert_close(table[4, 8], torch.tensor(1.0).sin())      # row 1, first freq
    assert torch.cdist(table, table).add(torch.eye(16)).min() > 0.1       # every patch its own
    model = ViT(tiny_config(pos_init="sincos"))
    torch.testing.assert_close(model.pos_embed[0, 1:], sincos_2d(4, 32))
    assert model.pos_embed[0, 0].abs().max() == 0 and model.pos_embed.requires_grad
    with pytest.raises(ValueError, match="pos_init"):
        ViT(tiny_config(pos_init="rope"))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(4, 6)


def test_initial_weights_follow_the_init_setting():
    """xavier (the paper's code): each of query, key and value Xavier-uniform on its own
    [dim, dim] matrix, MLP layers on theirs, biases near 0; trunc_normal: N(0, 0.02) within 2
    std; both start the head at 0. An unknown name is refused."""
    torch.manual_seed(0)
    dim = 96
    model = ViT(tiny_config(dim=dim, heads=3))
    block = model.blocks[0]
    bound_qkv = (6 / (dim + dim)) ** 0.5
    for part in block.attn.qkv.weight.detach().chunk(3):
        assert part.abs().max() <= bound_qkv
        assert part.std().item() == pytest.approx(bound_qkv / 3 ** 0.5, rel=0.05)
    fc1 = block.mlp.fc1.weight.detach()
    assert fc1.std().item() == pytest.approx((2 / (dim + 4 * dim)) ** 0.5, rel=0.05)
    assert block.attn.qkv.bias.abs().max() < 1e-4
    assert model.head.weight.abs().max() == 0
    timm = ViT(tiny_config(dim=dim, heads=3, init="trunc_normal"))
    w = timm.blocks[0].attn.qkv.weight.detach()
    assert w.abs().max() <= 0.04 and w.std().item() == pytest.approx(0.0176, rel=0.1)
    with pytest.raises(ValueError, match="init"):
        ViT(tiny_config(init="uniform"))
