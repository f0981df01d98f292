"""Hash-grid encoding in Triton: one program per (block of points, level).

Same semantics as nerfx.ref.hashgrid (and csrc/include/nerfx/hashgrid.h): clamp to [0, 1],
cell = min(floor(x * N_l), N_l - 1), dense rows where the level fits, else the XOR-of-primes hash.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nerfx.ref.hashgrid import GridLayout

BLOCK = 128


@triton.jit
def _level_geometry(offsets_ptr, resolutions_ptr, level, D: tl.constexpr):
    start = tl.load(offsets_ptr + level)
    n_rows = tl.load(offsets_ptr + level + 1) - start
    res = tl.load(resolutions_ptr + level)
    vertices = res + 1
    if D == 3:
        vertices = vertices * (res + 1) * (res + 1)
    else:
        vertices = vertices * (res + 1)
    return start, n_rows, res, vertices <= n_rows


@triton.jit
def _axis(x_ptr, points, mask, d: tl.constexpr, D: tl.constexpr, res):
    """Cell corner, fraction and in-range flag of one axis for a block of points."""
    xd = tl.load(x_ptr + points * D + d, mask=mask, other=0.0)
    inside = (xd >= 0.0) & (xd <= 1.0)
    pos = tl.minimum(tl.maximum(xd, 0.0), 1.0) * res.to(xd.dtype)
    corner = tl.minimum(pos.to(tl.int64), res - 1)  # pos >= 0, so truncation is floor
    return corner, pos - corner.to(xd.dtype), inside


@triton.jit
def _corner_row(c0, c1, c2, bit0: tl.constexpr, bit1: tl.constexpr, bit2: tl.constexpr, res,
                n_rows, dense, D: tl.constexpr):
    v0 = c0 + bit0
    v1 = c1 + bit1
    v2 = c2 + bit2
    dense_row = v0 + v1 * (res + 1)
    hashed = v0 ^ (v1 * 2654435761)
    if D == 3:
        dense_row += v2 * (res + 1) * (res + 1)
        hashed = hashed ^ (v2 * 805459861)
    return tl.where(dense, dense_row, hashed & (n_rows - 1))


@triton.jit
def _weight(f, bit: tl.constexpr):
    return bit * f + (1 - bit) * (1.0 - f)


@triton.jit
def _forward_kernel(x_ptr, params_ptr, offsets_ptr, resolutions_ptr, out_ptr, n_points, n_levels,
                    D: tl.constexpr, CORNERS: tl.constexpr, F: tl.constexpr,
                    BLOCK: tl.constexpr):
    level = tl.program_id(1)
    points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = points < n_points
    start, n_rows, res, dense = _level_geometry(offsets_ptr, resolutions_ptr, level, D)
    c0, f0, _ = _axis(x_ptr, points, mask, 0, D, res)
    c1, f1, _ = _axis(x_ptr, points, mask, 1, D, res)
    c2, f2, _ = _axis(x_ptr, points, mask, D - 1, D, res)
    feats = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=f0.dtype)
    for c in tl.static_range(CORNERS):
        b0: tl.constexpr = c & 1
        b1: tl.constexpr = (c >> 1) & 1
        b2: tl.constexpr = (c >> 2) & 1
        w = _weight(f0, b0) * _weight(f1, b1)
        if D == 3:
            w = w * _weight(f2, b2)
        rows = _corner_row(c0, c1, c2, b0, b1, b2, res, n_rows, dense, D)
        table = params_ptr + (start + rows)[:, None] * F + feats[None, :]
        acc += w[:, None] * tl.load(table, mask=mask[:, None], other=0.0).to(f0.dtype)
    out = out_ptr + points[:, None] * (n_levels * F) + level * F + feats[None, :]
    tl.store(out, acc, mask=mask[:, None])


@triton.jit
def _backward_kernel(x_ptr, params_ptr, offsets_ptr, resolutions_ptr, grad_out_ptr,
                     grad_params_ptr, grad_x_ptr, n_points, n_levels, NEEDS_X: tl.constexpr,
                     D: tl.constexpr, CORNERS: tl.constexpr, F: tl.constexpr,
                     BLOCK: tl.constexpr):
    level = tl.program_id(1)
    points = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = points < n_points
    start, n_rows, res, dense = _level_geometry(offsets_ptr, resolutions_ptr, level, D)
    c0, f0, in0 = _axis(x_ptr, points, mask, 0, D, res)
    c1, f1, in1 = _axis(x_ptr, points, mask, 1, D, res)
    c2, f2, in2 = _axis(x_ptr, points, mask, D - 1, D, res)
    feats = tl.arange(0, F)
    grad = tl.load(grad_out_ptr + points[:, None] * (n_levels * F) + level * F + feats[None, :],
                   mask=mask[:, None], other=0.0)
    gx0 = tl.zeros((BLOCK,), dtype=f0.dtype)
    gx1 = tl.zeros((BLOCK,), dtype=f0.dtype)
    gx2 = tl.zeros((BLOCK,), dtype=f0.dtype)
    for c in tl.static_range(CORNERS):
        b0: tl.constexpr = c & 1
        b1: tl.constexpr = (c >> 1) & 1
        b2: tl.constexpr = (c >> 2) & 1
        w0 = _weight(f0, b0)
        w1 = _weight(f1, b1)
        w2 = _weight(f2, b2) if D == 3 else 1.0
        rows = _corner_row(c0, c1, c2, b0, b1, b2, res, n_rows, dense, D)
        offs = (start + rows)[:, None] * F + feats[None, :]
        tl.atomic_add(grad_params_ptr + offs, (w0 * w1 * w2)[:, None] * grad, mask=mask[:, None])
        if NEEDS_X:
            feature = tl.load(params_ptr + offs, mask=mask[:, None], other=0.0).to(f0.dtype)
            dot = tl.sum(feature * grad, axis=1)  # [BLOCK]
            gx0 += (2 * b0 - 1) * w1 * w2 * dot
            gx1 += (2 * b1 - 1) * w0 * w2 * dot
            if D == 3:
                gx2 += (2 * b2 - 1) * w0 * w1 * dot
    if NEEDS_X:
        scale = res.to(f0.dtype)
        tl.atomic_add(grad_x_ptr + points * D, tl.where(in0, gx0 * scale, 0.0), mask=mask)
        tl.atomic_add(grad_x_ptr + points * D + 1, tl.where(in1, gx1 * scale, 0.0), mask=mask)
        if D == 3:
            tl.atomic_add(grad_x_ptr + points * D + 2, tl.where(in2, gx2 * scale, 0.0),
                          mask=mask)


def _geometry(layout: GridLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor(layout.offsets, dtype=torch.int64, device=device)
    resolutions = torch.tensor(layout.resolutions, dtype=torch.int64, device=device)
    return offsets, resolutions


def forward(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """x: [N, D] float32/float64, params: [n_params] -> [N, L * F] in x's dtype."""
    n, d = x.shape
    f = layout.n_features_per_level
    out = torch.empty(n, layout.n_levels * f, dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    offsets, resolutions = _geometry(layout, x.device)
    grid = (triton.cdiv(n, BLOCK), layout.n_levels)
    _forward_kernel[grid](x, params, offsets, resolutions, out, n, layout.n_levels,
                          D=d, CORNERS=2**d, F=f, BLOCK=BLOCK)
    return out


def backward(grad_out: torch.Tensor, x: torch.Tensor, params: torch.Tensor, layout: GridLayout,
             needs_x_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (grad_params in params' dtype, accumulated in x's dtype; grad_x [N, D] or None)."""
    n, d = x.shape
    grad_params = torch.zeros(params.shape, dtype=x.dtype, device=x.device)
    grad_x = torch.zeros_like(x) if needs_x_grad else grad_params  # unused pointer when not needed
    if n > 0:
        offsets, resolutions = _geometry(layout, x.device)
        grid = (triton.cdiv(n, BLOCK), layout.n_levels)
        _backward_kernel[grid](x, params, offsets, resolutions, grad_out, grad_params, grad_x, n,
                               layout.n_levels, NEEDS_X=needs_x_grad, D=d, CORNERS=2**d,
                               F=layout.n_features_per_level, BLOCK=BLOCK)
    return grad_params.to(params.dtype), (grad_x if needs_x_grad else None)
