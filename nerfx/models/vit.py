"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021).

    model = ViT(ViTConfig.base(num_classes=10))          # ViT-B/16 at 224 x 224
    logits = model(images)                               # [B, 3, 224, 224] -> [B, 10]

The image is cut into P x P patches, each linearly embedded (a strided convolution); a learned
class token is prepended and learned 1-D position embeddings added (eq. 1); pre-norm transformer
blocks follow (eq. 2-3, nerfx.models.layers.TransformerBlock); the class token's final LayerNorm
output goes through a linear head (eq. 4). Images of another size than the config's work too: the
position embeddings are interpolated bicubically on their 2-D grid (the paper's Sec. 3.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.models.layers import TransformerBlock, trunc_normal_init


@dataclass
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3
    num_classes: int = 1000
    dim: int = 768  # hidden size D
    depth: int = 12  # layers
    heads: int = 12
    mlp_ratio: float = 4.0  # MLP size = 4 D (paper Table 1)
    qkv_bias: bool = True
    dropout: float = 0.0  # paper: 0.1 for ImageNet-1k pre-training (Table 3 / App. B.1)
    drop_path: float = 0.1  # stochastic depth, linear over depth (DeiT, Touvron et al. 2021)
    # Initial position embeddings: "normal" (learned from trunc-normal noise, the paper's) or
    # "sincos" (learned from 2-D sine-cosine values, as MAE and Beyer et al. 2022 "Better plain
    # ViT baselines" start them; the paper's App. D.4 finds 1-D and 2-D embeddings on a par).
    pos_init: str = "normal"
    # Initial weights of the blocks' linear layers: "xavier" (Xavier-uniform weights, biases
    # N(0, 1e-6): the paper's code, google-research/vision_transformer) or "trunc_normal"
    # (N(0, 0.02) truncated at 2 std, biases 0: DeiT's and timm's default).
    init: str = "xavier"

    # Sizes (width/depth/heads): Base and Large from the paper's Table 1, Tiny and Small from DeiT.
    @classmethod
    def tiny(cls, **overrides) -> ViTConfig:
        return cls(**{"dim": 192, "depth": 12, "heads": 3, **overrides})

    @classmethod
    def small(cls, **overrides) -> ViTConfig:
        return cls(**{"dim": 384, "depth": 12, "heads": 6, **overrides})

    @classmethod
    def base(cls, **overrides) -> ViTConfig:
        return cls(**{"dim": 768, "depth": 12, "heads": 12, **overrides})

    @classmethod
    def large(cls, **overrides) -> ViTConfig:
        return cls(**{"dim": 1024, "depth": 24, "heads": 16, **overrides})

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


CONFIGS = {"Ti": ViTConfig.tiny, "S": ViTConfig.small, "B": ViTConfig.base, "L": ViTConfig.large}


def vit_config(name: str, **overrides) -> ViTConfig:
    """"Ti", "S", "B", "L", optionally with the patch size: "B/16", "L/32"."""
    size, _, patch = name.partition("/")
    if size not in CONFIGS:
        raise ValueError(f"vit_config: unknown size {size!r}; choose from {sorted(CONFIGS)}")
    if patch:
        overrides = {"patch_size": int(patch), **overrides}
    return CONFIGS[size](**overrides)


def resize_pos_embed(pos_embed: Tensor, new_grid: tuple[int, int],
                     old_grid: tuple[int, int] | None = None) -> Tensor:
    """Bicubic 2-D interpolation of patch position embeddings; the class token's is kept.

    pos_embed: [1, 1 + gh * gw, D] (a square old grid unless old_grid is given)
    -> [1, 1 + new_gh * new_gw, D].
    """
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]  # [1, 1, D], [1, gh * gw, D]
    if old_grid is None:
        side = math.isqrt(patch_pos.shape[1])
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    dim = pos_embed.shape[-1]
    grid = patch_pos.reshape(1, *old_grid, dim).permute(0, 3, 1, 2)  # [1, D, gh, gw]
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_pos = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)  # [1, 1 + new_gh * new_gw, D]


def sincos_2d(grid: int, dim: int, temperature: float = 10_000.0) -> Tensor:
    """2-D sine-cosine position embeddings [grid * grid, dim] (row-major patches; dim a multiple
    of 4): a quarter of the channels each for sin and cos of x and of y, at frequencies
    1 / temperature^(i / (dim / 4))."""
    if dim % 4:
        raise ValueError(f"ViT: sincos position embeddings need dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(grid, dtype=torch.float32),
                          torch.arange(grid, dtype=torch.float32), indexing="ij")  # [g, g]
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    xs, ys = x.flatten()[:, None] * omega, y.flatten()[:, None] * omega        # [g*g, D/4]
    return torch.cat([xs.sin(), xs.cos(), ys.sin(), ys.cos()], dim=1)          # [g*g, D]


class PatchEmbed(nn.Module):
    """Non-overlapping P x P patches, linearly projected: [B, C, H, W] -> [B, H/P * W/P, D]."""

    def __init__(self, patch_size: int, in_channels: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"ViT: image size {tuple(x.shape[-2:])} is not a multiple of the "
                             f"patch size {p}")
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class ViT(nn.Module):
    """The Vision Transformer classifier. forward(images [B, C, H, W]) -> logits [B, classes]."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = c = config
        if c.image_size % c.patch_size:
            raise ValueError(f"ViT: image_size {c.image_size} is not a multiple of patch_size "
                             f"{c.patch_size}")
        self.patch_embed = PatchEmbed(c.patch_size, c.in_channels, c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))  # [1, 1, D]
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.dim))  # [1, 1 + N, D]
        self.pos_drop = nn.Dropout(c.dropout)
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]  # 0 -> drop_path
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.heads, mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias,
                             dropout=c.dropout, drop_path=rate)
            for rate in rates)
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        # The blocks' linear layers as config.init says; position embeddings N(0, 0.02) (both);
        # the patch projection LeCun-normal (the paper's code); a zero-initialised head (paper,
        # Sec. 3.2).
        if self.config.init == "xavier":
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear):
                    # the fused query-key-value projection: each of the three its own matrix
                    parts = 3 if name.endswith(".qkv") else 1
                    for w in module.weight.data.chunk(parts):
                        nn.init.xavier_uniform_(w)
                    if module.bias is not None:
                        nn.init.normal_(module.bias, std=1e-6)
                elif isinstance(module, nn.LayerNorm):
                    nn.init.ones_(module.weight)
                    nn.init.zeros_(module.bias)
        elif self.config.init == "trunc_normal":
            self.apply(trunc_normal_init)
        else:
            raise ValueError(f"ViT: init must be 'xavier' or 'trunc_normal', got "
                             f"{self.config.init!r}")
        if self.config.pos_init == "sincos":
            with torch.no_grad():
                self.pos_embed[:, 1:] = sincos_2d(self.config.grid_size, self.config.dim)
                self.pos_embed[:, :1] = 0.0
        elif self.config.pos_init == "normal":
            nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        else:
            raise ValueError(f"ViT: pos_init must be 'normal' or 'sincos', got "
                             f"{self.config.pos_init!r}")
        nn.init.normal_(self.cls_token, std=1e-6)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w.view(w.shape[0], -1), std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embeddings for a grid of patches: [1, 1 + gh * gw, D]."""
        g = self.config.grid_size
        return resize_pos_embed(self.pos_embed, grid, (g, g))

    def resize(self, image_size: int) -> ViT:
        """Fine-tune at another resolution: interpolate the position embeddings once and keep
        them (the paper's Sec. 3.2). Returns self."""
        c = self.config
        new = replace(c, image_size=image_size)
        grid = (new.grid_size, new.grid_size)
        with torch.no_grad():
            self.pos_embed = nn.Parameter(self.pos_embed_for(grid).clone())
        self.config = new
        return self

    def features(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] -> tokens after the final LayerNorm [B, 1 + N, D] (class first)."""
        p = self.config.patch_size
        x = self.patch_embed(images)  # [B, N, D]
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.pos_embed_for(grid)  # [B, 1 + N, D]
        x = self.pos_drop(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, images: Tensor) -> Tensor:
        """images: [B, C, H, W] -> logits [B, num_classes] (features [B, D] with no head)."""
        return self.head(self.features(images)[:, 0])

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on the weight matrices only, not on biases, norms, the class token
        or the position embeddings (the usual ViT/DeiT recipe)."""
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            flat = param.dim() <= 1 or name in ("cls_token", "pos_embed")
            (no_decay if flat else decay).append(param)
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]


__all__ = ["CONFIGS", "PatchEmbed", "ViT", "ViTConfig", "resize_pos_embed", "sincos_2d",
           "vit_config"]
