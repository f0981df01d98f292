"""Blocks shared by the Vision Transformer and the diffusion U-Nets.

    block = TransformerBlock(dim=384, heads=6)          # pre-norm self-attention + MLP
    block = TransformerBlock(320, 8, cross_dim=768)     # + cross-attention to a context (LDM)
    x = block(x, context)                               # x: [B, N, dim] -> [B, N, dim]

Attention goes through nerfx.ops.MultiHeadAttention, so every block runs on any attention
backend: the run's choice (nerfx.ops.use_backend), not a setting of the block.
"""

from __future__ import annotations

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


__all__ = ["DropPath", "Mlp", "TransformerBlock", "drop_path", "trunc_normal_init"]
