"""The DDPM U-Net (Ho et al., 2020, Appendix B; official code: diffusion_tf/models/unet.py).

A PixelCNN++-style U-Net: a conv stem, `len(ch_mult)` levels of `num_res_blocks` residual blocks
each (GroupNorm, SiLU, 3x3 conv, the time embedding added in between, dropout), self-attention
after the blocks of the levels whose resolution is in `attn_resolutions`, a middle of
block-attention-block, and a mirrored upward path taking one skip connection per block.
The timestep enters as a sinusoidal embedding (Transformer-style) through a 2-layer MLP.

Attention is `nerfx.ops.MultiHeadAttention` (one head, as in the paper, by default); its backend
is the run's choice (nerfx.ops.use_backend), not a setting of the config.
For latent diffusion the model takes optional class labels (`num_classes`: an embedding added to
the time embedding, with one extra "null" label for classifier-free guidance) and an optional
context sequence (`context_dim`: cross-attention after each self-attention).
Its blocks (ResBlock, AttnBlock, Downsample, Upsample) are nerfx.models.layers', shared with the
latent U-Net and the KL autoencoder.

    model = UNet(UNetConfig.cifar10())       # 35.7M parameters
    eps = model(x, t)                        # x [B, 3, 32, 32], t [B] int -> [B, 3, 32, 32]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.models.layers import AttnBlock, Downsample, ResBlock, Upsample, group_norm, zero_module

__all__ = ["UNet", "UNetConfig", "timestep_embedding"]


@dataclass
class UNetConfig:
    resolution: int = 32  # input side; attention placement depends on it
    in_channels: int = 3
    out_channels: int = 3  # 3 for eps/x0/v prediction of RGB
    ch: int = 128  # base channels                                  [DDPM App. B: 128]
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)  # per level           [DDPM: (1,2,2,2) at 32x32]
    num_res_blocks: int = 2  # per level                            [DDPM: 2]
    attn_resolutions: tuple[int, ...] = (16,)  # where self-attention sits  [DDPM: 16x16]
    dropout: float = 0.1  # in every residual block                [DDPM: 0.1 on CIFAR-10]
    attn_heads: int = 1  # [official unet.py: single-head attention]
    num_groups: int = 32  # GroupNorm groups                       [official: 32]
    resamp_with_conv: bool = True  # conv after upsampling / strided-conv downsampling [official]
    num_classes: int | None = None  # class conditioning (label num_classes = "no label")
    context_dim: int | None = None  # cross-attention on a context [B, M, context_dim]

    @classmethod
    def cifar10(cls, **overrides) -> UNetConfig:
        """The paper's CIFAR-10 model (35.7M parameters)."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides) -> UNetConfig:
        """A small model for tests and CPU runs."""
        base = dict(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                    dropout=0.0, num_groups=8)
        return cls(**{**base, **overrides})


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of timesteps t [B] (official unet.py get_timestep_embedding:
    sin of the first half, cos of the second, frequencies exp(-ln(10000) * i / (half - 1)))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / (half - 1))
    args = t.float()[:, None] * freqs[None]  # [B, half]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class UNet(nn.Module):
    """forward(x [B, C, R, R], t [B] (ints in [0, T) or floats), y [B] labels | None,
    context [B, M, context_dim] | None) -> [B, out_channels, R, R]."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        levels = len(c.ch_mult)
        if c.resolution % 2 ** (levels - 1):
            raise ValueError(f"UNetConfig: resolution {c.resolution} must be divisible by "
                             f"2^{levels - 1} for {levels} levels (ch_mult={c.ch_mult})")
        temb = 4 * c.ch  # [official: temb_ch = ch * 4]
        self.temb = nn.Sequential(nn.Linear(c.ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.label_emb = (nn.Embedding(c.num_classes + 1, temb)
                          if c.num_classes is not None else None)

        def block(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, c.dropout, c.num_groups, temb_dim=temb, zero_out=True)

        def attn(ch: int) -> AttnBlock:
            return AttnBlock(ch, c.attn_heads, c.num_groups, c.context_dim)

        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        # Down: each level's blocks (with attention where the resolution asks), then a
        # downsampling except at the last level. `skips` are the channels of each saved output.
        self.down = nn.ModuleList()
        skips, ch, res = [c.ch], c.ch, c.resolution
        for i, mult in enumerate(c.ch_mult):
            level = nn.ModuleDict({"blocks": nn.ModuleList(), "attns": nn.ModuleList()})
            for _ in range(c.num_res_blocks):
                level["blocks"].append(block(ch, c.ch * mult))
                ch = c.ch * mult
                level["attns"].append(attn(ch) if res in c.attn_resolutions else nn.Identity())
                skips.append(ch)
            if i != levels - 1:
                level["downsample"] = Downsample(ch, c.resamp_with_conv)
                skips.append(ch)
                res //= 2
            self.down.append(level)
        self.mid_block1, self.mid_attn, self.mid_block2 = block(ch, ch), attn(ch), block(ch, ch)
        # Up: num_res_blocks + 1 blocks per level, each eating one skip.
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            level = nn.ModuleDict({"blocks": nn.ModuleList(), "attns": nn.ModuleList()})
            for _ in range(c.num_res_blocks + 1):
                level["blocks"].append(block(ch + skips.pop(), c.ch * mult))
                ch = c.ch * mult
                level["attns"].append(attn(ch) if res in c.attn_resolutions else nn.Identity())
            if i != 0:
                level["upsample"] = Upsample(ch, c.resamp_with_conv)
                res *= 2
            self.up.append(level)
        self.norm_out = group_norm(ch, c.num_groups)
        self.conv_out = zero_module(nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None,
                context: Tensor | None = None) -> Tensor:
        c = self.config
        if x.dim() != 4 or x.shape[1] != c.in_channels or x.shape[-2:] != (c.resolution,) * 2:
            raise ValueError(f"UNet expects [B, {c.in_channels}, {c.resolution}, {c.resolution}] "
                             f"images (the size it was built for), got {tuple(x.shape)}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        emb = self.temb(timestep_embedding(t, c.ch))  # [B, 4ch]
        if self.label_emb is not None:
            if y is None:
                raise ValueError(f"this U-Net is class-conditional: pass labels y (use "
                                 f"{c.num_classes} for no label)")
            emb = emb + self.label_emb(y)

        def run(blocks: nn.ModuleList, attns: nn.ModuleList, h: Tensor, j: int,
                skip: Tensor | None = None) -> Tensor:
            if skip is not None:
                h = torch.cat([h, skip], dim=1)
            h = blocks[j](h, emb)
            return attns[j](h, context) if isinstance(attns[j], AttnBlock) else h

        hs = [self.conv_in(x)]
        for level in self.down:
            for j in range(len(level["blocks"])):
                hs.append(run(level["blocks"], level["attns"], hs[-1], j))
            if "downsample" in level:
                hs.append(level["downsample"](hs[-1]))
        h = self.mid_block1(hs[-1], emb)
        h = self.mid_attn(h, context)
        h = self.mid_block2(h, emb)
        for level in self.up:
            for j in range(len(level["blocks"])):
                h = run(level["blocks"], level["attns"], h, j, skip=hs.pop())
            if "upsample" in level:
                h = level["upsample"](h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
