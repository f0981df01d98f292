"""Volume compositing of packed samples: the public op and its backends.

    out = composite_rays(sigmas, rgbs, t_start, t_end, offsets, background=white)
    out.color [n_rays, 3], out.opacity [n_rays], out.depth [n_rays], out.weights [n_samples]

Backends: `cuda` and `cpu` (nerfx._C; the backward is O(samples), from suffix sums of the saved
outputs), `triton` (nerfx.kernels.composite: a ray's samples across neighbouring lanes; CUDA
tensors, or CPU ones in Triton's interpreter) and `torch` (nerfx.ref.composite).
Differentiable w.r.t. sigmas, rgbs and background.

Types: the arithmetic and the outputs are in promote_types(sigmas, rgbs, t_start); gradients
come in each input's own type. The kernels take t_start and t_end in float32 or float64, with
sigmas and rgbs in the same type or, beside float32, float16 (the half colours of a mixed-precision
field are read as they are, with no widened copy); the torch backend takes any float types.
"""

from __future__ import annotations

import torch

from nerfx import _ext
from nerfx.ops._checks import (
    ANY,
    check_device,
    check_dtype,
    check_floating,
    check_shape,
    check_tensor,
)
from nerfx.ops._dispatch import (
    Backend,
    OpBackends,
    extension_kernel,
    register,
    triton_available,
)
from nerfx.ops._library import register_op
from nerfx.ref import composite as ref
from nerfx.specs import Composited, with_background

FLOATS = (torch.float32, torch.float64)
KERNEL_DTYPES = FLOATS + (torch.float16,)


def _kernel_types(problem: tuple) -> str | None:
    """Why the kernels cannot take these (t dtype, sigmas dtype, rgbs dtype), or None."""
    t_dtype, *values = problem
    if t_dtype not in FLOATS:
        return f"takes t_start/t_end in float32 or float64, not {t_dtype}"
    allowed = (t_dtype, torch.float16) if t_dtype == torch.float32 else (t_dtype,)
    if any(v not in allowed for v in values):
        return (f"takes sigmas and rgbs in {' or '.join(str(a) for a in allowed)} beside "
                f"{t_dtype} positions, not {[str(v) for v in values]}")
    return None


def _setup_context(ctx, inputs, output) -> None:
    sigmas, rgbs, t_start, t_end, offsets, threshold = inputs
    ctx.save_for_backward(sigmas, rgbs, t_start, t_end, offsets, *output)
    ctx.threshold = threshold


def _backward(ctx, grad_color, grad_opacity, grad_depth, grad_weights, backward_op=None):
    sigmas, rgbs, t_start, t_end, offsets, color, opacity, depth, weights = ctx.saved_tensors
    grad_color = torch.zeros_like(color) if grad_color is None else grad_color
    grad_opacity = torch.zeros_like(opacity) if grad_opacity is None else grad_opacity
    grad_depth = torch.zeros_like(depth) if grad_depth is None else grad_depth
    grad_weights = t_start.new_empty(0) if grad_weights is None else grad_weights
    backward_op = backward_op or torch.ops.nerfx.composite_rays_backward
    grad_sigmas, grad_rgbs = backward_op(
        grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_start, t_end,
        offsets, color, opacity, depth, weights, ctx.threshold)
    return grad_sigmas, grad_rgbs, None, None, None, None


def _fake(sigmas, rgbs, t_start, t_end, offsets, threshold):
    n_rays = offsets.shape[0] - 1  # the outputs are in t_start's type
    return (t_start.new_empty(n_rays, 3), t_start.new_empty(n_rays), t_start.new_empty(n_rays),
            t_start.new_empty(t_start.shape))


def _fake_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, *rest):
    return sigmas.new_empty(sigmas.shape), rgbs.new_empty(rgbs.shape)


def _register_library() -> None:
    register_op("composite_rays", fake=_fake, setup_context=_setup_context, backward=_backward,
                backward_op="composite_rays_backward", fake_backward=_fake_backward,
                no_second_order="the cpu and cuda backends")


_ext.on_load(_register_library)


def _run_compiled(sigmas, rgbs, t_start, t_end, offsets, threshold) -> Composited:
    # Selecting the cpu or cuda backend has loaded the extension.
    return Composited(*torch.ops.nerfx.composite_rays(sigmas, rgbs, t_start, t_end, offsets,
                                                      threshold))


@torch.library.custom_op("nerfx::composite_rays_triton", mutates_args=())
def _composite_triton(sigmas: torch.Tensor, rgbs: torch.Tensor, t_start: torch.Tensor,
                      t_end: torch.Tensor, offsets: torch.Tensor, threshold: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from nerfx.kernels import composite as kernels

    return kernels.forward(sigmas, rgbs, t_start, t_end, offsets, threshold)


@torch.library.custom_op("nerfx::composite_rays_triton_backward", mutates_args=())
def _composite_triton_backward(grad_color: torch.Tensor, grad_opacity: torch.Tensor,
                               grad_depth: torch.Tensor, grad_weights: torch.Tensor,
                               sigmas: torch.Tensor, rgbs: torch.Tensor, t_start: torch.Tensor,
                               t_end: torch.Tensor, offsets: torch.Tensor, color: torch.Tensor,
                               opacity: torch.Tensor, depth: torch.Tensor, weights: torch.Tensor,
                               threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    from nerfx.kernels import composite as kernels

    return kernels.backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs,
                            t_start, t_end, offsets, color, opacity, depth, weights, threshold)


def _backward_triton(ctx, grad_color, grad_opacity, grad_depth, grad_weights):
    return _backward(ctx, grad_color, grad_opacity, grad_depth, grad_weights,
                     torch.ops.nerfx.composite_rays_triton_backward)


register_op("composite_rays_triton", fake=_fake, setup_context=_setup_context,
            backward=_backward_triton, backward_op="composite_rays_triton_backward",
            fake_backward=_fake_backward, label="composite_rays",
            no_second_order="the triton backend")


def _run_triton(sigmas, rgbs, t_start, t_end, offsets, threshold) -> Composited:
    return Composited(*_composite_triton(sigmas, rgbs, t_start, t_end, offsets, threshold))


def _run_reference(sigmas, rgbs, t_start, t_end, offsets, threshold) -> Composited:
    return ref.composite_rays(sigmas, rgbs, t_start, t_end, offsets,
                              transmittance_threshold=threshold)


BACKENDS = register(OpBackends("composite_rays", [
    Backend("cuda", ("cuda",), KERNEL_DTYPES, _run_compiled, extension_kernel("composite_rays"),
            limits=_kernel_types),
    Backend("cpu", ("cpu",), KERNEL_DTYPES, _run_compiled, extension_kernel("composite_rays"),
            limits=_kernel_types),
    Backend("triton", ("cuda", "cpu"), KERNEL_DTYPES, _run_triton, triton_available,
            limits=_kernel_types),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), FLOATS + (torch.float16, torch.bfloat16),
            _run_reference),
]))


# The checks of the public function, before the backend is chosen and for every backend (the
# torch backend never reaches C++); the compiled op makes its own (csrc/composite/composite.cpp),
# in the same words where they overlap (nerfx.ops._checks).
OP = "composite_rays"


def _check(sigmas, rgbs, t_start, t_end, offsets) -> None:
    named = {"sigmas": sigmas, "rgbs": rgbs, "t_start": t_start, "t_end": t_end,
             "offsets": offsets}
    for name, t in named.items():
        check_tensor(OP, name, t)
        check_device(OP, name, t, "sigmas", sigmas)
    check_shape(OP, "sigmas", sigmas, "[S]", (ANY,))
    n = sigmas.shape[0]
    check_shape(OP, "rgbs", rgbs, "[S, 3]", (n, 3))
    check_shape(OP, "t_start", t_start, "[S]", (n,))
    check_shape(OP, "t_end", t_end, "[S]", (n,))
    for name in ("sigmas", "rgbs", "t_start"):
        check_floating(OP, name, named[name])
    check_dtype(OP, "t_end", t_end, (t_start.dtype,), " like t_start")
    check_shape(OP, "offsets", offsets, "[n_rays + 1]", (ANY,))
    if offsets.numel() < 1:
        raise ValueError(f"{OP}: offsets must be [n_rays + 1], got [0]")
    check_dtype(OP, "offsets", offsets, (torch.int64,))
    if offsets.numel() == 1 and n != 0:  # sizes alone, so on every device
        raise ValueError(f"{OP}: offsets of one entry (no rays) need S = 0, got S = {n}")
    # A ValueError here where it is free (CPU tensors, eager). The kernels check every ray's
    # range themselves on every device (an error on the CPU; a device-side assert on CUDA, seen at
    # the next synchronisation, with no sample outside [0, S) touched), so a GPU pays no
    # synchronisation and a compiled graph, which cannot branch on values, is covered too.
    if offsets.device.type == "cpu" and not torch.compiler.is_compiling():
        if offsets[0] != 0 or offsets[-1] != n or bool((offsets.diff() < 0).any()):
            raise ValueError(f"{OP}: offsets must rise from 0 to S = {n}")


def as_composite_input(values: torch.Tensor) -> torch.Tensor:
    """A field's densities or colours as compositing takes them beside float32 positions, with
    no copy where none is needed: float16 and float32 as they are (the kernels read half), any
    other type (bfloat16, float64) as float32."""
    return values if values.dtype in (torch.float16, torch.float32) else values.float()


def composite_rays(sigmas: torch.Tensor, rgbs: torch.Tensor, t_start: torch.Tensor,
                   t_end: torch.Tensor, offsets: torch.Tensor, *,
                   background: torch.Tensor | None = None,
                   transmittance_threshold: float = 1e-4, backend: str = "auto") -> Composited:
    """Composites packed samples front to back along each ray.

    sigmas, t_start, t_end: [S]; rgbs: [S, 3]; offsets: [n_rays + 1] int64, ray r owning samples
    offsets[r]:offsets[r+1] in order of increasing t. background: None, [3] or [n_rays, 3].
    Returns Composited(color [n_rays, 3], opacity [n_rays], depth [n_rays], weights [S]).
    """
    _check(sigmas, rgbs, t_start, t_end, offsets)
    chosen = BACKENDS.select(backend, sigmas.device, (t_start.dtype, sigmas.dtype, rgbs.dtype),
                             problem=(t_start.dtype, sigmas.dtype, rgbs.dtype))
    out = chosen.run(sigmas, rgbs, t_start, t_end, offsets, float(transmittance_threshold))
    return with_background(out, background)
