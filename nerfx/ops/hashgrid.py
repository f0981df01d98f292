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

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nerfx import _ext
from nerfx.ops._checks import check_device, check_floating, check_shape, check_tensor
from nerfx.ops._dispatch import (
    Backend,
    OpBackends,
    extension_kernel,
    register,
    triton_available,
)
from nerfx.ops._library import register_op
from nerfx.ref.hashgrid import compute_dtype, encode_with_layout
from nerfx.specs import GridLayout, grid_layout

PARAM_DTYPES = (torch.float32, torch.float64, torch.float16)


# --- torch.library registrations: fake kernels, autograd, no double backward -----------------
# The compiled backends (cpu, cuda) are nerfx::hash_encode(_backward) from csrc/ext.cpp; the
# triton backend is nerfx::hash_encode_triton(_backward), defined here. Both take the layout as
# plain lists, so torch.compile(fullgraph=True) traces through every backend.

def _setup_context(ctx, inputs, output) -> None:
    x, params, offsets, resolutions, n_features = inputs
    ctx.save_for_backward(x, params)
    ctx.layout_args = (offsets, resolutions, n_features)


def _backward_with(backward_op: Callable) -> Callable:
    def backward(ctx, grad_out):
        x, params = ctx.saved_tensors
        needs_x_grad, needs_params_grad = ctx.needs_input_grad[:2]
        grad_params, grad_x = backward_op(grad_out.contiguous(), x, params, *ctx.layout_args,
                                          needs_x_grad, needs_params_grad)
        return ((grad_x if needs_x_grad else None),
                (grad_params if needs_params_grad else None), None, None, None)

    return backward


def _fake_forward(x, params, offsets, resolutions, n_features):
    return x.new_empty(x.shape[0], len(resolutions) * n_features)  # [N, L * F]


def _fake_backward(grad_out, x, params, offsets, resolutions, n_features, needs_x_grad,
                   needs_params_grad):
    grad_x = x.new_empty(x.shape) if needs_x_grad else x.new_empty(0)
    grad_params = params.new_empty(params.shape) if needs_params_grad else params.new_empty(0)
    return grad_params, grad_x


def _register_compiled() -> None:
    register_op("hash_encode", fake=_fake_forward, setup_context=_setup_context,
                backward=_backward_with(lambda *a: torch.ops.nerfx.hash_encode_backward(*a)),
                backward_op="hash_encode_backward", fake_backward=_fake_backward,
                no_second_order="the cpu and cuda backends")


_ext.on_load(_register_compiled)


def _run_compiled(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    # Selecting the cpu or cuda backend has loaded the extension.
    return torch.ops.nerfx.hash_encode(x, params, list(layout.offsets), list(layout.resolutions),
                                       layout.n_features_per_level)


@functools.lru_cache(maxsize=64)
def _layout_of(n_input_dims: int, offsets: tuple[int, ...], resolutions: tuple[int, ...],
               n_features: int) -> GridLayout:
    """The GridLayout the lists describe (a level is dense where its vertices fit its rows)."""
    rows = [b - a for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    dense = tuple((r + 1) ** n_input_dims <= n for r, n in zip(resolutions, rows, strict=True))
    return GridLayout(n_input_dims, n_features, resolutions, offsets, dense)


@torch.library.custom_op("nerfx::hash_encode_triton", mutates_args=())
def _hash_encode_triton(x: Tensor, params: Tensor, offsets: list[int], resolutions: list[int],
                        n_features: int) -> Tensor:
    """x: [N, D], params: [n_params] -> [N, L * F] in x's dtype."""
    from nerfx.kernels import hashgrid as kernels

    layout = _layout_of(x.shape[1], tuple(offsets), tuple(resolutions), n_features)
    return kernels.forward(x, params, layout)


@torch.library.custom_op("nerfx::hash_encode_triton_backward", mutates_args=())
def _hash_encode_triton_backward(grad_out: Tensor, x: Tensor, params: Tensor, offsets: list[int],
                                 resolutions: list[int], n_features: int, needs_x_grad: bool,
                                 needs_params_grad: bool) -> tuple[Tensor, Tensor]:
    """-> (grad_params [n_params] or [0], grad_x [N, D] or [0]): only those asked for."""
    from nerfx.kernels import hashgrid as kernels

    layout = _layout_of(x.shape[1], tuple(offsets), tuple(resolutions), n_features)
    grad_params, grad_x = kernels.backward(grad_out, x, params, layout,
                                           needs_x_grad=needs_x_grad,
                                           needs_params_grad=needs_params_grad)
    return (params.new_empty(0) if grad_params is None else grad_params,
            x.new_empty(0) if grad_x is None else grad_x)


register_op("hash_encode_triton", fake=_fake_forward, setup_context=_setup_context,
            backward=_backward_with(lambda *a: torch.ops.nerfx.hash_encode_triton_backward(*a)),
            backward_op="hash_encode_triton_backward", fake_backward=_fake_backward,
            label="hash_encode", no_second_order="the triton backend")


def _run_triton(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    return _hash_encode_triton(x, params, list(layout.offsets), list(layout.resolutions),
                               layout.n_features_per_level)


BACKENDS = register(OpBackends("hash_encode", [
    Backend("cuda", ("cuda",), PARAM_DTYPES, _run_compiled, extension_kernel("hash_encode")),
    Backend("cpu", ("cpu",), PARAM_DTYPES, _run_compiled, extension_kernel("hash_encode")),
    Backend("triton", ("cuda", "cpu"), PARAM_DTYPES, _run_triton, triton_available),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), PARAM_DTYPES + (torch.bfloat16,),
            encode_with_layout),
]))


# --- the public op -------------------------------------------------------------------------

# The checks of the public function, before the backend is chosen and for every backend (the
# triton and torch backends never reach C++); the compiled op makes its own (csrc/hashgrid/
# hashgrid.cpp), in the same words where they overlap (nerfx.ops._checks).
OP = "hash_encode"


def _check_x(x: torch.Tensor) -> None:
    check_tensor(OP, "x", x)
    if x.dim() < 1 or x.shape[-1] not in (2, 3):
        raise ValueError(f"{OP}: x must be [..., 2] or [..., 3], got {list(x.shape)}")
    check_floating(OP, "x", x)


def _check_params(x: torch.Tensor, params: torch.Tensor, layout: GridLayout) -> None:
    check_tensor(OP, "params", params)
    check_floating(OP, "params", params)
    check_shape(OP, "params", params, "[n_params]", (layout.n_params,))
    check_device(OP, "params", params, "x", x)


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
