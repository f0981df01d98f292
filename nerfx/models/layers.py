"""Blocks shared by the Vision Transformer, the diffusion U-Nets and the KL autoencoder.

Transformer blocks (ViT; the latent U-Net's spatial transformers):

    block = TransformerBlock(dim=384, heads=6)          # pre-norm self-attention + MLP
    block = TransformerBlock(320, 8, cross_dim=768)     # + cross-attention to a context (LDM)
    x = block(x, context)                               # x: [B, N, dim] -> [B, N, dim]

Convolutional blocks (the DDPM U-Net, the latent U-Net, the KL autoencoder):

    block = ResBlock(64, 128, dropout=0.1, groups=32, temb_dim=512)   # U-Net, time-conditioned
    block = ResBlock(64, 128, dropout=0.0, groups=32)                 # autoencoder, no time
    attn = AttnBlock(128, heads=1, groups=32)                         # self-attention over H*W
    st = SpatialTransformer(128, heads=4, context_dim=512)            # LDM's attention slots
    Downsample(128, with_conv=True), Upsample(128, with_conv=True)    # H/2, 2H

Attention goes through nerfx.ops.MultiHeadAttention, so every block runs on any attention
backend: the run's choice (nerfx.ops.use_backend), not a setting of the block.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.ops import MultiHeadAttention


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): zero whole samples of a residual branch with
    probability p while training, scaling the survivors by 1/(1 - p). x: [B, ...]."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # [B, 1, ...]
    return x * mask / keep


class DropPath(nn.Module):
    """Stochastic depth on a residual branch, per sample."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"DropPath: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> Linear -> dropout: the transformer's feed-forward block.
    x: [..., dim] -> [..., out_dim or dim]."""

    def __init__(self, dim: int, hidden_dim: int, out_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (ViT, Dosovitskiy et al. 2021, eq. 2-3):
    x = x + DropPath(Attn(LN(x))); [x = x + DropPath(CrossAttn(LN(x), context))];
    x = x + DropPath(MLP(LN(x))).

    forward(x [B, N, dim], context [B, M, cross_dim] or None) -> [B, N, dim]. The cross-attention
    layer exists only when cross_dim is set (latent diffusion's conditioning).
    """

    def __init__(self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 dropout: float = 0.0, drop_path: float = 0.0, cross_dim: int | None = None,
                 eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, heads, qkv_bias=qkv_bias)
        if cross_dim is not None:
            self.norm_cross = nn.LayerNorm(dim, eps=eps)
            self.cross_attn = MultiHeadAttention(dim, heads, qkv_bias=qkv_bias,
                                                 cross_dim=cross_dim)
        self.cross_dim = cross_dim
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: [B, N, dim], context: [B, M, cross_dim] (blocks with cross_dim only) -> [B, N, dim]"""
        x = x + self.drop_path(self.drop(self.attn(self.norm1(x))))
        if self.cross_dim is not None:
            if context is None:
                raise ValueError("TransformerBlock: this block has cross-attention and needs a "
                                 "context [B, M, cross_dim]")
            x = x + self.drop_path(self.drop(self.cross_attn(self.norm_cross(x), context)))
        elif context is not None:
            raise ValueError("TransformerBlock: got a context but the block was built without "
                             "cross_dim")
        return x + self.drop_path(self.mlp(self.norm2(x)))


def trunc_normal_init(module: nn.Module, std: float = 0.02) -> None:
    """ViT/timm initialisation: linear weights ~ N(0, std) truncated at 2 std, biases 0,
    LayerNorm to identity."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------
# convolutional blocks: the U-Nets (DDPM, latent diffusion) and the KL autoencoder


def group_norm(ch: int, groups: int) -> nn.GroupNorm:
    """GroupNorm over ch channels in min(groups, ch) groups, eps 1e-6 [DDPM's official code:
    tf group_norm eps 1e-6; ldm/modules/diffusionmodules/model.py Normalize: eps 1e-6]."""
    return nn.GroupNorm(min(groups, ch), ch, eps=1e-6)


def zero_module(module: nn.Module) -> nn.Module:
    """Zeros every parameter of module and returns it. DDPM's official code initialises the last
    layer of each residual branch (and the output conv) with scale 1e-10; zeros give the same
    start: every block begins as the identity [LDM: zero_module]."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x [B, C_in, H, W], temb [B, temb_dim] (only when built with temb_dim) -> [B, C_out, H, W]:
    GroupNorm, SiLU, 3x3 conv, [+ a projection of the time embedding], GroupNorm, SiLU, dropout,
    3x3 conv, plus the input (through a 1x1 conv when the channels change).

    The U-Nets' block has a time embedding and a zero-initialised last conv (zero_out=True)
    [DDPM official unet.py resnet_block; ldm openaimodel.py ResBlock]; the autoencoder's has
    neither [ldm/modules/diffusionmodules/model.py ResnetBlock, temb_channels=0].
    """

    def __init__(self, c_in: int, c_out: int, dropout: float, groups: int,
                 temb_dim: int | None = None, zero_out: bool = False):
        super().__init__()
        self.norm1 = group_norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, c_out) if temb_dim is not None else None
        self.norm2 = group_norm(c_out, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if zero_out:
            zero_module(self.conv2)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # [B, C_out, H, W]
        if self.temb_proj is not None:
            if temb is None:
                raise ValueError("ResBlock: this block takes a time embedding [B, temb_dim]")
            h = h + self.temb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Residual self-attention over the H*W positions (and cross-attention to a context when
    context_dim is set): x [B, C, H, W], context [B, M, context_dim] -> [B, C, H, W]
    [DDPM official unet.py attn_block; ldm model.py AttnBlock (one head)]."""

    def __init__(self, ch: int, heads: int, groups: int, context_dim: int | None = None):
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.attn = MultiHeadAttention(ch, heads, qkv_bias=True)
        zero_module(self.attn.proj)  # official: the output projection starts at ~0 (1e-10)
        self.cross = None
        if context_dim is not None:
            self.cross_norm = group_norm(ch, groups)
            self.cross = MultiHeadAttention(ch, heads, qkv_bias=True, cross_dim=context_dim)
            zero_module(self.cross.proj)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        x = x + self.attn(seq).transpose(1, 2).reshape(b, c, h, w)
        if self.cross is not None:
            if context is None:
                raise ValueError("this attention block has cross-attention (context_dim set): "
                                 "pass context")
            seq = self.cross_norm(x).flatten(2).transpose(1, 2)
            x = x + self.cross(seq, context).transpose(1, 2).reshape(b, c, h, w)
        return x


class SpatialTransformer(AttnBlock):
    """x [B, C, H, W], context [B, M, context_dim] -> [B, C, H, W] [ldm/modules/attention.py
    SpatialTransformer]: GroupNorm, 1x1 conv in, `depth` transformer blocks (self-attention,
    cross-attention to the context, feed-forward; TransformerBlock), 1x1 conv out initialised to
    zero (the block starts as the identity), residual.

    It takes the place of the U-Net's AttnBlock (a subclass, so UNet.forward hands it the
    context); it builds its own layers rather than AttnBlock's. The official feed-forward is
    GEGLU; TransformerBlock's is GELU, same width ratio 4.
    """

    def __init__(self, ch: int, heads: int, context_dim: int, depth: int = 1, groups: int = 32):
        nn.Module.__init__(self)  # not AttnBlock's layers: this block's own
        if ch % heads:
            raise ValueError(f"SpatialTransformer: {ch} channels not divisible by {heads} heads")
        self.norm = group_norm(ch, groups)
        self.proj_in = nn.Conv2d(ch, ch, 1)
        self.blocks = nn.ModuleList(TransformerBlock(ch, heads, cross_dim=context_dim, eps=1e-5)
                                    for _ in range(depth))
        self.proj_out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj_out.weight)  # [attention.py: zero_module(proj_out)]
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if context is None:
            raise ValueError("SpatialTransformer needs a context [B, M, context_dim]")
        b, c, h, w = x.shape
        seq = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        for block in self.blocks:
            seq = block(seq, context)
        return x + self.proj_out(seq.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """[B, C, H, W] -> [B, C, H/2, W/2]: 3x3 conv with stride 2 (official: pad right/bottom),
    or 2x2 average pooling without the conv."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """[B, C, H, W] -> [B, C, 2H, 2W]: nearest neighbour, then a 3x3 conv (when with_conv)."""

    def __init__(self, ch: int, with_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


__all__ = ["AttnBlock", "DropPath", "Downsample", "Mlp", "ResBlock", "SpatialTransformer",
           "TransformerBlock", "Upsample", "drop_path", "group_norm", "trunc_normal_init",
           "zero_module"]
