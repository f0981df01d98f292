"""Hash-grid encoding in Triton: one program per (block of points, level).

Same semantics as nerfx.ref.hashgrid (and csrc/include/nerfx/hashgrid.h): clamp to [0, 1],
cell = min(floor(x * N_l), N_l - 1), dense rows where the level fits, else the XOR-of-primes hash.

Point indices and every offset derived from them are int64 (N * L * F passes 2^31 at 2^26 points
of the paper's grid). The level geometry lives in small device tensors made once per layout and
device. The backward scatters with relaxed atomics: the adds commute and nothing is read back, so
no ordering is needed; their order varies, so the CUDA backward is not deterministic.
"""

from __future__ import annotations

import functools
import warnings

import torch
import triton
import triton.language as tl

from nerfx.specs import GridLayout

BLOCK = 128
# Launched without floating-point fusion: Triton would contract `pos - corner` (pos = x * N_l)
# into one FMA over the unrounded product while the corner comes from the rounded one, so the
# fraction differed from the reference's by up to half an ulp of pos (1e-4 of a cell at N_l =
# 1751), and could come out negative; csrc builds with -fmad=false for the same reason.
NO_FUSION = {"enable_fp_fusion": False}


@triton.jit
def _level_geometry(offsets_ptr, resolutions_ptr, D: tl.constexpr):
    """This program's level (axis 1) and its table: (level, first row, rows, resolution, whether
    its vertices fit the rows one to one)."""
    level = tl.program_id(1)
    start = tl.load(offsets_ptr + level)
    n_rows = tl.load(offsets_ptr + level + 1) - start
    res = tl.load(resolutions_ptr + level)
    vertices = res + 1
    if D == 3:
        vertices = vertices * (res + 1) * (res + 1)
    else:
        vertices = vertices * (res + 1)
    return level, start, n_rows, res, vertices <= n_rows


@triton.jit
def _block_points(block, BLOCK: tl.constexpr):
    """The point indices [BLOCK] of block `block` (an int32 program id), int64 so that neither
    points * D nor points * (L * F) can wrap."""
    return block.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _program_points(n_points, BLOCK: tl.constexpr):
    """This program's points (axis 0 runs over blocks of points) and which of them exist."""
    points = _block_points(tl.program_id(0), BLOCK)
    return points, points < n_points


@triton.jit
def _row_offsets(points, level, n_levels, F: tl.constexpr):
    """Offsets [BLOCK, F] of the points' features of one level in an [N, L * F] array."""
    return points[:, None] * (n_levels * F) + level * F + tl.arange(0, F)[None, :]


@triton.jit
def _axis(x_ptr, points, mask, d: tl.constexpr, D: tl.constexpr, res):
    """Cell corner, fraction and in-range flag of one axis for a block of points."""
    xd = tl.load(x_ptr + points * D + d, mask=mask, other=0.0)
    inside = (xd >= 0.0) & (xd <= 1.0)
    pos = tl.minimum(tl.maximum(xd, 0.0), 1.0) * res.to(xd.dtype)
    corner = tl.minimum(pos.to(tl.int64), res - 1)  # pos >= 0, so truncation is floor
    return corner, pos - corner.to(xd.dtype), inside


@triton.jit
def _cell(x_ptr, points, mask, res, D: tl.constexpr):
    """Corner, fraction and in-range flag on each axis of the points' cells (in 2-D the third
    axis repeats the second)."""
    c0, f0, in0 = _axis(x_ptr, points, mask, 0, D, res)
    c1, f1, in1 = _axis(x_ptr, points, mask, 1, D, res)
    c2, f2, in2 = _axis(x_ptr, points, mask, D - 1, D, res)
    return c0, f0, in0, c1, f1, in1, c2, f2, in2


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
    points, mask = _program_points(n_points, BLOCK)
    level, start, n_rows, res, dense = _level_geometry(offsets_ptr, resolutions_ptr, D)
    c0, f0, _, c1, f1, _, c2, f2, _ = _cell(x_ptr, points, mask, res, D)
    feats = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=f0.dtype)
    for c in tl.static_range(CORNERS):
        b0 = c & 1
        b1 = (c >> 1) & 1
        b2 = (c >> 2) & 1
        w = _weight(f0, b0) * _weight(f1, b1)
        if D == 3:
            w = w * _weight(f2, b2)
        rows = _corner_row(c0, c1, c2, b0, b1, b2, res, n_rows, dense, D)
        table = params_ptr + (start + rows)[:, None] * F + feats[None, :]
        acc += w[:, None] * tl.load(table, mask=mask[:, None], other=0.0).to(f0.dtype)
    tl.store(out_ptr + _row_offsets(points, level, n_levels, F), acc, mask=mask[:, None])


@triton.jit
def _backward_kernel(x_ptr, params_ptr, offsets_ptr, resolutions_ptr, grad_out_ptr,
                     grad_params_ptr, grad_x_ptr, n_points, n_levels, NEEDS_PARAMS: tl.constexpr,
                     NEEDS_X: tl.constexpr, D: tl.constexpr, CORNERS: tl.constexpr,
                     F: tl.constexpr, BLOCK: tl.constexpr):
    """Both gradients from one location of each (point, level) cell, each only if asked for."""
    points, mask = _program_points(n_points, BLOCK)
    level, start, n_rows, res, dense = _level_geometry(offsets_ptr, resolutions_ptr, D)
    c0, f0, in0, c1, f1, in1, c2, f2, in2 = _cell(x_ptr, points, mask, res, D)
    feats = tl.arange(0, F)
    grad = tl.load(grad_out_ptr + _row_offsets(points, level, n_levels, F), mask=mask[:, None],
                   other=0.0)
    gx0 = tl.zeros((BLOCK,), dtype=f0.dtype)
    gx1 = tl.zeros((BLOCK,), dtype=f0.dtype)
    gx2 = tl.zeros((BLOCK,), dtype=f0.dtype)
    for c in tl.static_range(CORNERS):
        b0 = c & 1
        b1 = (c >> 1) & 1
        b2 = (c >> 2) & 1
        w0 = _weight(f0, b0)
        w1 = _weight(f1, b1)
        w2 = _weight(f2, b2) if D == 3 else 1.0
        rows = _corner_row(c0, c1, c2, b0, b1, b2, res, n_rows, dense, D)
        offs = (start + rows)[:, None] * F + feats[None, :]
        if NEEDS_PARAMS:
            tl.atomic_add(grad_params_ptr + offs, (w0 * w1 * w2)[:, None] * grad,
                          mask=mask[:, None], sem="relaxed")
        if NEEDS_X:
            feature = tl.load(params_ptr + offs, mask=mask[:, None], other=0.0).to(f0.dtype)
            dot = tl.sum(feature * grad, axis=1)  # [BLOCK]
            gx0 += (2 * b0 - 1) * w1 * w2 * dot
            gx1 += (2 * b1 - 1) * w0 * w2 * dot
            if D == 3:
                gx2 += (2 * b2 - 1) * w0 * w1 * dot
    if NEEDS_X:
        scale = res.to(f0.dtype)
        tl.atomic_add(grad_x_ptr + points * D, tl.where(in0, gx0 * scale, 0.0), mask=mask,
                      sem="relaxed")
        tl.atomic_add(grad_x_ptr + points * D + 1, tl.where(in1, gx1 * scale, 0.0), mask=mask,
                      sem="relaxed")
        if D == 3:
            tl.atomic_add(grad_x_ptr + points * D + 2, tl.where(in2, gx2 * scale, 0.0),
                          mask=mask, sem="relaxed")


@functools.lru_cache(maxsize=64)
def _geometry(layout: GridLayout, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The level offsets [L + 1] and resolutions [L], int64 on the device: copied from the host
    once per layout and device (each copy from a host list waits for the device)."""
    offsets = torch.tensor(layout.offsets, dtype=torch.int64, device=device)
    resolutions = torch.tensor(layout.resolutions, dtype=torch.int64, device=device)
    return offsets, resolutions


def _alert_not_deterministic(x: torch.Tensor) -> None:
    """The atomics' order varies on a GPU (the interpreter runs programs one by one): tell
    torch.use_deterministic_algorithms(True) users, as ATen's alertNotDeterministic does."""
    if x.is_cuda and torch.are_deterministic_algorithms_enabled():
        message = ("nerfx::hash_encode_backward (triton) does not have a deterministic "
                   "implementation, but you set 'torch.use_deterministic_algorithms(True")
        if torch.is_deterministic_algorithms_warn_only_enabled():
            warnings.warn(message + ", warn_only=True)'.", stacklevel=3)
        else:
            raise RuntimeError(message + ")'. backend='torch' is deterministic.")


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
                          D=d, CORNERS=2**d, F=f, BLOCK=BLOCK, **NO_FUSION)
    return out


def backward(grad_out: torch.Tensor, x: torch.Tensor, params: torch.Tensor, layout: GridLayout,
             needs_x_grad: bool, needs_params_grad: bool = True
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """grad_out: [N, L * F] -> (grad_params [n_params] in params' dtype, accumulated in x's
    dtype, or None; grad_x [N, D] or None), each computed only when asked for."""
    n, d = x.shape
    grad_params = (torch.zeros(params.shape, dtype=x.dtype, device=x.device)
                   if needs_params_grad else None)
    grad_x = torch.zeros_like(x) if needs_x_grad else None
    if n > 0 and (needs_params_grad or needs_x_grad):
        _alert_not_deterministic(x)
        offsets, resolutions = _geometry(layout, x.device)
        grid = (triton.cdiv(n, BLOCK), layout.n_levels)
        unused = grad_out  # a valid pointer for the gradient that is not computed
        _backward_kernel[grid](x, params, offsets, resolutions, grad_out,
                               unused if grad_params is None else grad_params,
                               unused if grad_x is None else grad_x, n, layout.n_levels,
                               NEEDS_PARAMS=needs_params_grad, NEEDS_X=needs_x_grad, D=d,
                               CORNERS=2**d, F=layout.n_features_per_level, BLOCK=BLOCK,
                               **NO_FUSION)
    return (None if grad_params is None else grad_params.to(params.dtype)), grad_x
