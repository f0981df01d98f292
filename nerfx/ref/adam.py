"""Reference Adam step that skips entries whose gradient is exactly 0, in PyTorch.

Instant-NGP (Müller et al. 2022, sec. 4): "we skip Adam steps for hash table entries whose
gradient is exactly 0". tiny-cuda-nn's Adam keeps a step count per parameter, so each entry's bias
correction uses the number of steps that entry took. An untouched entry keeps its parameter, both
moments and its count unchanged; a touched entry takes torch.optim.Adam's step (single-tensor
arithmetic, amsgrad off, no weight decay) with its own count t:

    m <- lerp(m, g, 1 - beta1);  v <- v * beta2 + (1 - beta2) g^2
    p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""

from __future__ import annotations

import torch

__all__ = ["adam_step", "state_dtype"]


def state_dtype(param_dtype: torch.dtype) -> torch.dtype:
    """The moments' dtype: float64 for float64 parameters, else float32 (half tables keep their
    moments in float32, as tiny-cuda-nn does: (1 - beta2) g^2 underflows in half)."""
    return torch.float64 if param_dtype == torch.float64 else torch.float32


@torch.no_grad()
def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: float, beta1: float,
              beta2: float, eps: float, grad_scale: torch.Tensor | None = None,
              found_inf: torch.Tensor | None = None) -> None:
    """In place. param, grad: [*shape] (the parameter's dtype); exp_avg, exp_avg_sq: [*shape]
    (state_dtype(param.dtype)); step: [*shape] int32, the steps each entry took. All contiguous.
    grad_scale, found_inf: torch.amp.GradScaler's loss scale (divided out of the gradient, in the
    moments' type) and overflow flag (nonzero: nothing changes), or None."""
    if found_inf is not None and bool(found_inf.reshape(()) != 0):
        return
    touched = grad.reshape(-1).ne(0).nonzero().squeeze(1)  # [k] flat indices, k <= n
    if touched.numel() == 0:
        return
    flat = [t.view(-1) for t in (param, exp_avg, exp_avg_sq, step)]
    p, m, v, t = (f.index_select(0, touched) for f in flat)  # [k] each
    g = grad.reshape(-1).index_select(0, touched).to(m.dtype)  # [k]
    if grad_scale is not None:  # the inverse as GradScaler.unscale_ computes it
        g = g * grad_scale.reshape(()).double().reciprocal().float().to(m.dtype)
    t += 1
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    # Each entry's own bias corrections, in float64 like torch's Python scalars, then rounded.
    steps = t.double()
    step_size = (lr / (1 - beta1**steps)).to(m.dtype)  # [k]
    bias_correction2_sqrt = (1 - beta2**steps).sqrt().to(m.dtype)  # [k]
    denom = v.sqrt() / bias_correction2_sqrt + eps
    p = (p.to(m.dtype) - step_size * m / denom).to(param.dtype)
    for target, value in zip(flat, (p, m, v, t), strict=True):
        target.index_copy_(0, touched, value)
