"""Multiresolution hash-grid encoding: the public op, its backends and the nn.Module.

    enc = HashGridEncoding(n_input_dims=3)          # Instant-NGP's defaults: L=16, F=2, T=2^19
    features = enc(x)                               # x: [..., 3] in [0, 1] -> [..., 32]

Backends: `cuda` and `cpu` (nerfx._C, one shared header of math), `triton` (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), `torch` (the reference in nerfx.ref.hashgrid).
Gradients flow to the parameters and to x, each computed only when required, both in one pass;
second-order gradients are not implemented. The cpu backward is deterministic; the cuda and triton
backwards on a GPU add with atomics, are not, and say so to torch.use_deterministic_algorithms.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nerfx import _ext
from nerfx.ops._dispatch import (
    Backend,
    OpBackends,
    extension_kernel,
    register,
    triton_available,
)
from nerfx.ref.hashgrid import compute_dtype, encode_with_layout
from nerfx.specs import GridLayout, grid_layout

PARAM_DTYPES = (torch.float32, torch.float64, torch.float16)


# --- compiled backends (cpu, cuda): torch.library autograd and fake-tensor registrations -------

def _setup_context(ctx, inputs, output) -> None:
    x, params, offsets, resolutions, n_features = inputs
    ctx.save_for_backward(x, params)
    ctx.layout_args = (offsets, resolutions, n_features)


def _backward(ctx, grad_out):
    x, params = ctx.saved_tensors
    needs_x_grad, needs_params_grad = ctx.needs_input_grad[:2]
    grad_params, grad_x = torch.ops.nerfx.hash_encode_backward(
        grad_out, x, params, *ctx.layout_args, needs_x_grad, needs_params_grad)
    return ((grad_x if needs_x_grad else None), (grad_params if needs_params_grad else None),
            None, None, None)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("hash_encode: second-order gradients are not implemented by the "
                              "cpu and cuda backends; use backend='torch' for them")


def _register_library() -> None:
    @torch.library.register_fake("nerfx::hash_encode")
    def _(x, params, offsets, resolutions, n_features):
        return x.new_empty(x.shape[0], len(resolutions) * n_features)

    @torch.library.register_fake("nerfx::hash_encode_backward")
    def _(grad_out, x, params, offsets, resolutions, n_features, needs_x_grad,
          needs_params_grad):
        grad_x = x.new_empty(x.shape) if needs_x_grad else x.new_empty(0)
        grad_params = params.new_empty(params.shape) if needs_params_grad else params.new_empty(0)
        return grad_params, grad_x

    torch.library.register_autograd("nerfx::hash_encode", _backward, setup_context=_setup_context)
    torch.library.register_autograd("nerfx::hash_encode_backward", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)


_ext.on_load(_register_library)


def _run_compiled(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    # Selecting the cpu or cuda backend has loaded the extension.
    return torch.ops.nerfx.hash_encode(x, params, list(layout.offsets), list(layout.resolutions),
                                       layout.n_features_per_level)


# --- triton backend --------------------------------------------------------------------------

class _TritonHashEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, layout):
        from nerfx.kernels import hashgrid as kernels

        ctx.save_for_backward(x, params)
        ctx.layout = layout
        return kernels.forward(x, params, layout)

    @staticmethod
    def backward(ctx, grad_out):
        from nerfx.kernels import hashgrid as kernels

        x, params = ctx.saved_tensors
        grad_params, grad_x = kernels.backward(grad_out.contiguous(), x, params, ctx.layout,
                                               needs_x_grad=ctx.needs_input_grad[0],
                                               needs_params_grad=ctx.needs_input_grad[1])
        return grad_x, grad_params, None


def _run_triton(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    return _TritonHashEncode.apply(x, params, layout)


BACKENDS = register(OpBackends("hash_encode", [
    Backend("cuda", ("cuda",), PARAM_DTYPES, _run_compiled, extension_kernel("hash_encode")),
    Backend("cpu", ("cpu",), PARAM_DTYPES, _run_compiled, extension_kernel("hash_encode")),
    Backend("triton", ("cuda", "cpu"), PARAM_DTYPES, _run_triton, triton_available),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), PARAM_DTYPES + (torch.bfloat16,),
            encode_with_layout),
]))


# --- the public op -------------------------------------------------------------------------

def _check_x(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"hash_encode: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] not in (2, 3):
        raise ValueError(f"hash_encode: x must have shape [..., 2] or [..., 3], got "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"hash_encode: x must be a floating-point tensor, got {x.dtype}")


def _check_params(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> None:
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"hash_encode: params must be a torch.Tensor, got {type(params).__name__}")
    if not params.is_floating_point():
        raise TypeError(f"hash_encode: params must be a floating-point tensor, got "
                        f"{params.dtype}")
    if params.dim() != 1 or params.numel() != layout.n_params:
        raise ValueError(f"hash_encode: params must be 1-D with {layout.n_params} entries for "
                         f"this grid, got shape {tuple(params.shape)}")
    if x.device != params.device:
        raise ValueError(f"hash_encode: x is on {x.device} but params is on {params.device}")


def hash_encode(x: torch.Tensor, params: torch.Tensor, *, n_levels: int,
                n_features_per_level: int, log2_hashmap_size: int, base_resolution: int,
                per_level_scale: float, backend: str = "auto") -> torch.Tensor:
    """Multiresolution hash-grid encoding.

    x: [..., D] (D = 2 or 3) in [0, 1], values outside are clamped; params: [n_params] flat table
    (float32, float16 or float64). Returns [..., n_levels * n_features_per_level] in
    promote_types(x.dtype, params.dtype). Half parameters are read as float32 and their gradient
    is accumulated in float32.
    """
    _check_x(x)
    layout = grid_layout(x.shape[-1], n_levels, n_features_per_level, log2_hashmap_size,
                         base_resolution, float(per_level_scale))
    _check_params(x, params, layout)
    dtype = compute_dtype(x.dtype, params.dtype)
    keeps_half = dtype == torch.float32 and params.dtype == torch.float16
    stored = params if keeps_half else params.to(dtype)
    chosen = BACKENDS.select(backend, x.device, (stored.dtype,))
    flat = x.reshape(-1, x.shape[-1]).to(dtype).contiguous()  # [N, D]
    out = chosen.run(flat, stored.contiguous(), layout)  # [N, L * F]
    out = out.to(torch.promote_types(x.dtype, params.dtype))
    return out.reshape(*x.shape[:-1], layout.n_levels * n_features_per_level)


class HashGridEncoding(nn.Module):
    """Instant-NGP's multiresolution hash encoding with one flat `params` table.

    per_level_scale defaults to exp((ln finest_resolution - ln base_resolution) / (n_levels - 1)),
    so the finest level has finest_resolution cells per axis. Parameters start in U(-1e-4, 1e-4).
    The backend is a run setting (nerfx.ops.use_backend), not a property of the module.
    """

    def __init__(self, n_input_dims: int = 3, n_levels: int = 16, n_features_per_level: int = 2,
                 log2_hashmap_size: int = 19, base_resolution: int = 16,
                 per_level_scale: float | None = None, finest_resolution: int = 2048,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        if per_level_scale is None:
            per_level_scale = math.exp((math.log(finest_resolution) - math.log(base_resolution))
                                       / max(n_levels - 1, 1))
        self.config = dict(n_levels=n_levels, n_features_per_level=n_features_per_level,
                           log2_hashmap_size=log2_hashmap_size, base_resolution=base_resolution,
                           per_level_scale=float(per_level_scale))
        self.n_input_dims = n_input_dims
        self.layout = grid_layout(n_input_dims, n_levels, n_features_per_level, log2_hashmap_size,
                                  base_resolution, float(per_level_scale))
        self.params = nn.Parameter(torch.empty(self.layout.n_params, dtype=dtype))
        nn.init.uniform_(self.params, -1e-4, 1e-4)

    @property
    def output_dim(self) -> int:
        return self.layout.n_levels * self.layout.n_features_per_level

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., n_input_dims] in [0, 1] -> [..., output_dim]"""
        if x.shape[-1] != self.n_input_dims:
            raise ValueError(f"HashGridEncoding: expected x of shape [..., {self.n_input_dims}], "
                             f"got {tuple(x.shape)}")
        return hash_encode(x, self.params, **self.config)

    def extra_repr(self) -> str:
        items = ", ".join(f"{k}={v}" for k, v in self.config.items())
        return f"n_input_dims={self.n_input_dims}, {items}, n_params={self.layout.n_params}"
