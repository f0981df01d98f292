"""Reference multiresolution hash-grid encoding (Instant-NGP, Mueller et al. 2022), in PyTorch.

Level l has N_l = floor(base_resolution * per_level_scale**l) cells per axis and N_l + 1 vertices.
Its rows of the flat table are `offsets[l]:offsets[l+1]`; a level whose vertices fit in
2**log2_hashmap_size rows gets one row per vertex (dense), the others exactly 2**log2_hashmap_size
rows indexed by the spatial hash XOR_d(v_d * prime_d) mod T with primes 1, 2654435761, 805459861.
Inputs are clamped to [0, 1]; coordinates outside it get no gradient, those on 0 and 1 do.
"""

from __future__ import annotations

import itertools

import torch

from nerfx.specs import GridLayout, grid_layout

PRIMES = (1, 2654435761, 805459861)


def compute_dtype(x_dtype: torch.dtype, params_dtype: torch.dtype) -> torch.dtype:
    """float64 when either input is float64, else float32 (half parameters compute in float32)."""
    return torch.float64 if torch.float64 in (x_dtype, params_dtype) else torch.float32


def vertex_rows(vertex: torch.Tensor, res: int, n_rows: int, dense: bool) -> torch.Tensor:
    """Table rows of integer grid vertices. vertex: [N, D] int64 -> [N] int64."""
    if dense:
        strides = (res + 1) ** torch.arange(vertex.shape[-1], device=vertex.device)
        return (vertex * strides).sum(-1)
    hashed = torch.zeros_like(vertex[:, 0])
    for d in range(vertex.shape[-1]):
        hashed = hashed ^ (vertex[:, d] * PRIMES[d])
    return hashed & (n_rows - 1)  # low bits of the int64 products equal uint32 arithmetic


def encode_with_layout(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """x: [N, D] in the compute dtype, params: [n_params] any float dtype -> [N, n_levels * F]."""
    n_features = layout.n_features_per_level
    params = params.to(x.dtype)  # half tables compute, and accumulate gradients, in float32
    # Clamp to [0, 1]; the gradient passes on the closed interval and is zero outside it.
    inside = (x >= 0) & (x <= 1)
    x = torch.where(inside, x, x.detach().clamp(0.0, 1.0))
    features = []
    for level, res in enumerate(layout.resolutions):
        start, stop = layout.offsets[level], layout.offsets[level + 1]
        table = params[start * n_features:stop * n_features].view(stop - start, n_features)
        pos = x * res  # [N, D]
        cell = pos.detach().floor().clamp(max=res - 1)  # x = 1 lies in the last cell
        frac = pos - cell  # [N, D]
        level_out = x.new_zeros(x.shape[0], n_features)
        for corner in itertools.product((0, 1), repeat=x.shape[-1]):
            upper = torch.tensor(corner, device=x.device, dtype=torch.bool)  # [D]
            weight = torch.where(upper, frac, 1 - frac).prod(-1)  # [N]
            rows = vertex_rows(cell.long() + upper.long(), res, stop - start, layout.dense[level])
            level_out = level_out + weight[:, None] * table[rows]
        features.append(level_out)
    return torch.cat(features, dim=-1)


def hash_encode(x: torch.Tensor, params: torch.Tensor, *, n_levels: int, n_features_per_level: int,
                log2_hashmap_size: int, base_resolution: int,
                per_level_scale: float) -> torch.Tensor:
    """Hash-grid encoding of x: [..., D] in [0, 1] -> [..., n_levels * n_features_per_level]."""
    layout = grid_layout(x.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
                         base_resolution, float(per_level_scale))
    dtype = compute_dtype(x.dtype, params.dtype)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    out = encode_with_layout(flat, params.to(dtype), layout)
    out = out.to(torch.promote_types(x.dtype, params.dtype))
    return out.reshape(*x.shape[:-1], out.shape[-1])
