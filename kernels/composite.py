"""Volume compositing in Triton: one program per RAYS rays, their samples CHUNK at a time.

Same semantics as nerfx.ref.composite (and csrc/include/nerfx/composite.h):
    alpha_i = 1 - exp(-tau_i), tau_i = sigma_i (t_end_i - t_start_i), T_i = exp(-sum_{j<i} tau_j),
    w_i = T_i alpha_i where T_i >= threshold, else 0.
Where the CUDA kernel runs one thread per ray through its samples (a warp's loads then fall a
ray's length apart), here neighbouring lanes read neighbouring samples of a ray. The incoming
optical depth is a sum scan across the chunk (tl.cumsum), carried from chunk to chunk, as the
reference computes it; its rounding differs from the sequential kernels' product of survivals by
an ulp or so. The backward recomputes T with the same code, so both passes cut each ray at the
same sample. Offsets are clamped into [0, S): bad offsets (refused up front for CPU tensors)
give wrong values, never an access outside the arrays.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

RAYS = 16   # rays a program
CHUNK = 64  # samples of each ray a step


@triton.jit
def _rays(offsets_ptr, n_rays, n_samples, RAYS: tl.constexpr):
    """This program's rays [RAYS] (int64), which exist, and their sample ranges [begin, end)."""
    rays = tl.program_id(0).to(tl.int64) * RAYS + tl.arange(0, RAYS)
    live = rays < n_rays
    begin = tl.load(offsets_ptr + rays, mask=live, other=0)
    end = tl.load(offsets_ptr + rays + 1, mask=live, other=0)
    begin = tl.minimum(tl.maximum(begin, 0), n_samples)
    end = tl.minimum(tl.maximum(end, begin), n_samples)
    return rays, live, begin, end


@triton.jit
def _samples(sigmas_ptr, t_start_ptr, t_end_ptr, begin, end, step, depth_before, threshold,
             CHUNK: tl.constexpr):
    """Chunk `step` of each ray: indices [RAYS, CHUNK], which exist, t_start, t_end, delta,
    optical depth tau, survival exp(-tau), incoming transmittance T and whether T >= threshold;
    depth_before [RAYS] is the optical depth of the ray's earlier chunks."""
    idx = begin[:, None] + step * CHUNK + tl.arange(0, CHUNK)[None, :]
    inside = idx < end[:, None]
    t0 = tl.load(t_start_ptr + idx, mask=inside, other=0.0)
    t1 = tl.load(t_end_ptr + idx, mask=inside, other=0.0)
    sigma = tl.load(sigmas_ptr + idx, mask=inside, other=0.0).to(t0.dtype)
    delta = t1 - t0
    tau = sigma * delta
    before = depth_before[:, None] + (tl.cumsum(tau, axis=1) - tau)  # exclusive, [RAYS, CHUNK]
    transmittance = tl.exp(-before)
    alive = inside & (transmittance >= threshold)
    return idx, inside, t0, t1, delta, tau, tl.exp(-tau), transmittance, alive


@triton.jit
def _forward_kernel(sigmas_ptr, rgbs_ptr, t_start_ptr, t_end_ptr, offsets_ptr, color_ptr,
                    opacity_ptr, depth_ptr, weights_ptr, n_rays, n_samples, threshold_ptr,
                    RAYS: tl.constexpr, CHUNK: tl.constexpr):
    rays, live, begin, end = _rays(offsets_ptr, n_rays, n_samples, RAYS)
    threshold = tl.load(threshold_ptr)
    zero = tl.zeros((RAYS,), dtype=t_start_ptr.dtype.element_ty)
    red, green, blue, opacity, depth, depth_before = zero, zero, zero, zero, zero, zero
    for step in range(0, tl.cdiv(tl.max(end - begin, axis=0), CHUNK)):
        idx, inside, t0, t1, _, tau, keep, transmittance, alive = _samples(
            sigmas_ptr, t_start_ptr, t_end_ptr, begin, end, step, depth_before, threshold, CHUNK)
        w = tl.where(alive, transmittance * (1.0 - keep), 0.0)
        tl.store(weights_ptr + idx, w, mask=inside)
        red += tl.sum(w * tl.load(rgbs_ptr + idx * 3, mask=alive, other=0.0).to(w.dtype), 1)
        green += tl.sum(w * tl.load(rgbs_ptr + idx * 3 + 1, mask=alive, other=0.0).to(w.dtype), 1)
        blue += tl.sum(w * tl.load(rgbs_ptr + idx * 3 + 2, mask=alive, other=0.0).to(w.dtype), 1)
        opacity += tl.sum(w, 1)
        depth += tl.sum(w * 0.5 * (t0 + t1), 1)
        depth_before += tl.sum(tau, 1)
    tl.store(color_ptr + rays * 3, red, mask=live)
    tl.store(color_ptr + rays * 3 + 1, green, mask=live)
    tl.store(color_ptr + rays * 3 + 2, blue, mask=live)
    tl.store(opacity_ptr + rays, opacity, mask=live)
    tl.store(depth_ptr + rays, depth, mask=live)


@triton.jit
def _backward_kernel(sigmas_ptr, rgbs_ptr, t_start_ptr, t_end_ptr, offsets_ptr, color_ptr,
                     opacity_ptr, depth_ptr, weights_ptr, g_color_ptr, g_opacity_ptr,
                     g_depth_ptr, g_weights_ptr, grad_sigmas_ptr, grad_rgbs_ptr, n_rays,
                     n_samples, threshold_ptr, HAS_G_WEIGHTS: tl.constexpr, RAYS: tl.constexpr,
                     CHUNK: tl.constexpr):
    """dL/dc_i = w_i grad_color; dL/dsigma_i = delta_i (T_{i+1} v_i - sum_{k>i} w_k v_k) with
    v_k = grad_color . c_k + grad_opacity + grad_depth t_mid_k + grad_weight_k (composite.h)."""
    rays, live, begin, end = _rays(offsets_ptr, n_rays, n_samples, RAYS)
    threshold = tl.load(threshold_ptr)
    g_red = tl.load(g_color_ptr + rays * 3, mask=live, other=0.0)
    g_green = tl.load(g_color_ptr + rays * 3 + 1, mask=live, other=0.0)
    g_blue = tl.load(g_color_ptr + rays * 3 + 2, mask=live, other=0.0)
    g_opacity = tl.load(g_opacity_ptr + rays, mask=live, other=0.0)
    g_depth = tl.load(g_depth_ptr + rays, mask=live, other=0.0)
    # Each ray's total of w_k v_k, from its saved outputs (plus the weights' own gradient).
    total = (g_opacity * tl.load(opacity_ptr + rays, mask=live, other=0.0)
             + g_depth * tl.load(depth_ptr + rays, mask=live, other=0.0)
             + g_red * tl.load(color_ptr + rays * 3, mask=live, other=0.0)
             + g_green * tl.load(color_ptr + rays * 3 + 1, mask=live, other=0.0)
             + g_blue * tl.load(color_ptr + rays * 3 + 2, mask=live, other=0.0))
    n_steps = tl.cdiv(tl.max(end - begin, axis=0), CHUNK)
    if HAS_G_WEIGHTS:
        for step in range(0, n_steps):
            idx = begin[:, None] + step * CHUNK + tl.arange(0, CHUNK)[None, :]
            inside = idx < end[:, None]
            total += tl.sum(tl.load(weights_ptr + idx, mask=inside, other=0.0)
                            * tl.load(g_weights_ptr + idx, mask=inside, other=0.0), 1)
    prefix = tl.zeros_like(total)  # sum of w_k v_k over the ray's earlier chunks
    depth_before = tl.zeros_like(total)
    for step in range(0, n_steps):
        idx, inside, t0, t1, delta, tau, keep, transmittance, alive = _samples(
            sigmas_ptr, t_start_ptr, t_end_ptr, begin, end, step, depth_before, threshold, CHUNK)
        w = tl.where(alive, transmittance * (1.0 - keep), 0.0)
        red = tl.load(rgbs_ptr + idx * 3, mask=alive, other=0.0).to(w.dtype)
        green = tl.load(rgbs_ptr + idx * 3 + 1, mask=alive, other=0.0).to(w.dtype)
        blue = tl.load(rgbs_ptr + idx * 3 + 2, mask=alive, other=0.0).to(w.dtype)
        value = (g_opacity[:, None] + g_depth[:, None] * 0.5 * (t0 + t1) + g_red[:, None] * red
                 + g_green[:, None] * green + g_blue[:, None] * blue)
        if HAS_G_WEIGHTS:
            value += tl.load(g_weights_ptr + idx, mask=inside, other=0.0)
        weighted = w * value
        through = prefix[:, None] + tl.cumsum(weighted, axis=1)  # sum_{k<=i} w_k v_k
        grad_sigma = tl.where(alive, delta * (transmittance * keep * value - (total[:, None]
                                                                              - through)), 0.0)
        tl.store(grad_sigmas_ptr + idx, grad_sigma.to(grad_sigmas_ptr.dtype.element_ty),
                 mask=inside)
        rgb_type = grad_rgbs_ptr.dtype.element_ty
        tl.store(grad_rgbs_ptr + idx * 3, (w * g_red[:, None]).to(rgb_type), mask=inside)
        tl.store(grad_rgbs_ptr + idx * 3 + 1, (w * g_green[:, None]).to(rgb_type), mask=inside)
        tl.store(grad_rgbs_ptr + idx * 3 + 2, (w * g_blue[:, None]).to(rgb_type), mask=inside)
        prefix += tl.sum(weighted, 1)
        depth_before += tl.sum(tau, 1)


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """value as a one-entry tensor of like's dtype and device: a float argument would reach the
    kernel as float32, and the float64 kernels compare transmittance with the exact threshold."""
    return torch.full((1,), value, dtype=like.dtype, device=like.device)


def forward(sigmas: torch.Tensor, rgbs: torch.Tensor, t_start: torch.Tensor, t_end: torch.Tensor,
            offsets: torch.Tensor, threshold: float) -> tuple[torch.Tensor, ...]:
    """sigmas, t_start, t_end [S], rgbs [S, 3], offsets [n_rays + 1] -> (color [n_rays, 3],
    opacity [n_rays], depth [n_rays], weights [S]), in t_start's dtype."""
    n_rays, n_samples = offsets.numel() - 1, t_start.numel()
    color = t_start.new_empty(n_rays, 3)
    opacity, depth = t_start.new_empty(n_rays), t_start.new_empty(n_rays)
    weights = t_start.new_empty(n_samples)
    if n_rays > 0:
        _forward_kernel[(triton.cdiv(n_rays, RAYS),)](
            sigmas.contiguous(), rgbs.contiguous(), t_start.contiguous(), t_end.contiguous(),
            offsets.contiguous(), color, opacity, depth, weights, n_rays, n_samples,
            _scalar(threshold, t_start), RAYS=RAYS, CHUNK=CHUNK)
    return color, opacity, depth, weights


def backward(grad_color: torch.Tensor, grad_opacity: torch.Tensor, grad_depth: torch.Tensor,
             grad_weights: torch.Tensor, sigmas: torch.Tensor, rgbs: torch.Tensor,
             t_start: torch.Tensor, t_end: torch.Tensor, offsets: torch.Tensor,
             color: torch.Tensor, opacity: torch.Tensor, depth: torch.Tensor,
             weights: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs' gradients (grad_weights [S], or [0] for none) and the forward's inputs and
    outputs -> (grad_sigmas [S] in sigmas' dtype, grad_rgbs [S, 3] in rgbs')."""
    n_rays, n_samples = offsets.numel() - 1, t_start.numel()
    grad_sigmas = torch.empty(sigmas.shape, dtype=sigmas.dtype, device=sigmas.device)
    grad_rgbs = torch.empty(rgbs.shape, dtype=rgbs.dtype, device=rgbs.device)
    has_g_weights = grad_weights.numel() > 0
    if n_rays > 0:
        dtype = t_start.dtype
        _backward_kernel[(triton.cdiv(n_rays, RAYS),)](
            sigmas.contiguous(), rgbs.contiguous(), t_start.contiguous(), t_end.contiguous(),
            offsets.contiguous(), color.contiguous(), opacity.contiguous(), depth.contiguous(),
            weights.contiguous(), grad_color.to(dtype).contiguous(),
            grad_opacity.to(dtype).contiguous(), grad_depth.to(dtype).contiguous(),
            grad_weights.to(dtype).contiguous() if has_g_weights else weights, grad_sigmas,
            grad_rgbs, n_rays, n_samples, _scalar(threshold, t_start),
            HAS_G_WEIGHTS=has_g_weights, RAYS=RAYS, CHUNK=CHUNK)
    return grad_sigmas, grad_rgbs
