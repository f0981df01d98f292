"""Adam that skips entries whose gradient is exactly 0: the fused op and the optimizer using it.

    adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15)
    optimizer = SkipZeroAdam([{"params": encoding.parameters(), "skip_zero": True},
                              {"params": mlp.parameters()}], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)

Instant-NGP (Müller et al. 2022, sec. 4): "we skip Adam steps for hash table entries whose
gradient is exactly 0". A hash-table entry that no sample of the batch touched keeps its value,
its moments and its step count; tiny-cuda-nn's Adam counts steps per parameter, so an entry's bias
correction uses the steps it took. torch.optim.Adam instead moves every entry by its old momentum
on every step. A touched entry takes torch.optim.Adam's arithmetic with its own count.

Backends: `cuda` and `cpu` (nerfx._C: the entry update once in csrc/include/nerfx/adam.h, one
pass over the table, in place) and `torch` (nerfx.ref.adam: gathers the touched entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import torch
from torch.optim.adam import adam as torch_adam  # torch.optim.Adam's functional step
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from nerfx import _ext
from nerfx.ops._checks import (
    check_contiguous,
    check_device,
    check_dtype,
    check_floating,
    check_same_shape,
    check_tensor,
)
from nerfx.ops._dispatch import Backend, OpBackends, extension_kernel, register
from nerfx.ops._library import register_op
from nerfx.ref import adam as ref
from nerfx.ref.adam import state_dtype

__all__ = ["SkipZeroAdam", "adam_step", "state_dtype"]

PARAM_DTYPES = (torch.float32, torch.float64, torch.float16)


def _fake(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, grad_scale=None,
          found_inf=None) -> None:
    return None  # updates its arguments in place, returns nothing


def _register_library() -> None:
    register_op("adam_step", fake=_fake)  # an optimiser step: not differentiable


_ext.on_load(_register_library)


def _run_compiled(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
                  exp_avg_sq: torch.Tensor, step: torch.Tensor, lr: float, beta1: float,
                  beta2: float, eps: float, grad_scale: torch.Tensor | None = None,
                  found_inf: torch.Tensor | None = None) -> None:
    torch.ops.nerfx.adam_step(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps,
                              grad_scale, found_inf)


BACKENDS = register(OpBackends("adam_step", [
    Backend("cuda", ("cuda",), PARAM_DTYPES, _run_compiled, extension_kernel("adam_step")),
    Backend("cpu", ("cpu",), PARAM_DTYPES, _run_compiled, extension_kernel("adam_step")),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), PARAM_DTYPES + (torch.bfloat16,),
            ref.adam_step),
]))


def _check_settings(label: str, lr: float, beta1: float, beta2: float, eps: float) -> None:
    if not (lr >= 0 and eps >= 0 and 0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"{label}: needs lr >= 0, eps >= 0 and betas in [0, 1), got lr={lr}, "
                         f"betas=({beta1}, {beta2}), eps={eps}")


# The checks of the public function, before the backend is chosen and for every backend (the
# torch backend never reaches C++); the compiled op makes its own (csrc/adam/adam.cpp), in the
# same words where they overlap (nerfx.ops._checks).
OP = "adam_step"


def _check(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
           exp_avg_sq: torch.Tensor, step: torch.Tensor) -> None:
    named = {"param": param, "grad": grad, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
             "step": step}
    for name, t in named.items():
        check_tensor(OP, name, t)
        check_same_shape(OP, name, t, "param", param)
        check_device(OP, name, t, "param", param)
        if name != "grad":
            check_contiguous(OP, name, t, "it is updated in place")
    check_floating(OP, "param", param)
    check_dtype(OP, "grad", grad, (param.dtype,), " like param")
    for name in ("exp_avg", "exp_avg_sq"):
        check_dtype(OP, name, named[name], (state_dtype(param.dtype),), f" for {param.dtype} param")
    check_dtype(OP, "step", step, (torch.int32,))


def _check_scaler_tensor(name: str, t: torch.Tensor | None, param: torch.Tensor) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.numel() != 1:
        got = f"{t.dtype} {list(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise TypeError(f"{OP}: {name} must be a torch.float32 tensor of one element (as "
                        f"torch.amp.GradScaler keeps it), got {got}")
    check_device(OP, name, t, "param", param)


def adam_step(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor,
              exp_avg_sq: torch.Tensor, step: torch.Tensor, *, lr: float, beta1: float,
              beta2: float, eps: float, grad_scale: torch.Tensor | None = None,
              found_inf: torch.Tensor | None = None, backend: str = "auto") -> None:
    """One Adam step in place, skipping the entries whose gradient is exactly 0.

    param, grad: [*shape] float32, float16 or float64 (float32/float16 tables on cpu/cuda,
    bfloat16 too on torch); exp_avg, exp_avg_sq: [*shape] in state_dtype(param.dtype) (float32,
    or float64 for float64 params); step: [*shape] int32, the steps each entry took. param and the
    state are contiguous and updated in place. An entry with grad == 0 keeps all four unchanged;
    every other entry counts one more step t and takes torch.optim.Adam's update with bias
    corrections 1 - beta1^t and 1 - beta2^t of its own t.

    Mixed precision (torch.amp.GradScaler's tensors, float32 of one element on param's device):
    grad_scale, the loss scale the gradient carries, is divided out entry by entry (in the
    moments' type: a half gradient is not rounded again); where found_inf is nonzero the step
    changes nothing. The kernels read both on the device, with no host synchronisation.
    """
    _check(param, grad, exp_avg, exp_avg_sq, step)
    _check_settings(OP, lr, beta1, beta2, eps)
    _check_scaler_tensor("grad_scale", grad_scale, param)
    _check_scaler_tensor("found_inf", found_inf, param)
    chosen = BACKENDS.select(backend, param.device, (param.dtype,))
    with torch.no_grad():
        chosen.run(param, grad.contiguous(), exp_avg, exp_avg_sq, step, float(lr), float(beta1),
                   float(beta2), float(eps), grad_scale, found_inf)


def _on(t: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """A GradScaler scalar on param's device and as adam_step takes it ([1] float32)."""
    return None if t is None else t.to(param.device, torch.float32, non_blocking=True).reshape(1)


def _skip_zero_state(param: torch.Tensor, saved: dict[str, Any], index: int
                     ) -> dict[str, torch.Tensor]:
    """A skip-zero parameter's state from a saved one, as this optimiser keeps it: moments in
    state_dtype(param.dtype), one int32 count per entry, on the parameter's device, copied. A
    torch.optim.Adam state (one count for the whole tensor) gives every entry that count."""
    where = f"SkipZeroAdam.load_state_dict: parameter {index}"
    missing = sorted({"step", "exp_avg", "exp_avg_sq"} - saved.keys())
    if missing:
        raise ValueError(f"{where}: the saved state lacks {missing}")
    step = saved["step"]
    step = step if isinstance(step, torch.Tensor) else torch.tensor(float(step))
    if step.dim() == 0:  # torch.optim.Adam's count, shared by every entry
        step = torch.full(param.shape, int(step.item()), dtype=torch.int32, device=param.device)
    elif step.shape == param.shape:
        step = step.to(param.device, torch.int32, copy=True).contiguous()
    else:
        raise ValueError(f"{where}: the saved step is {tuple(step.shape)}, expected a count per "
                         f"entry {tuple(param.shape)} or torch.optim.Adam's single count")
    state = {"step": step}
    for key in ("exp_avg", "exp_avg_sq"):
        value = saved[key]
        if value.shape != param.shape:
            raise ValueError(f"{where}: the saved {key} is {tuple(value.shape)} but the parameter "
                             f"is {tuple(param.shape)}; the checkpoint belongs to another model")
        state[key] = value.to(param.device, state_dtype(param.dtype), copy=True).contiguous()
    return state


class SkipZeroAdam(torch.optim.Optimizer):
    """Adam whose `skip_zero` parameter groups skip the entries whose gradient is exactly 0.

    A group with skip_zero=True (Instant-NGP's hash table) steps through adam_step: an untouched
    entry keeps its value, moments and step count; a touched one takes torch.optim.Adam's update
    bias-corrected by its own count (Müller et al. 2022, sec. 4; tiny-cuda-nn's Adam). Its state:
    exp_avg and exp_avg_sq in state_dtype(param.dtype) (float32 for half tables) and step, an
    int32 count per entry. weight_decay must be 0 there (the paper decays the MLP weights only,
    and decay would make every entry's gradient nonzero).

    Other groups take torch.optim.Adam's step (torch's functional Adam: the same state layout,
    weight_decay as L2, `fused` as in torch). Settings per group: lr, betas, eps, weight_decay,
    skip_zero, fused; the training loop may set group["lr"] before each step.

    torch.amp.GradScaler: where every group is skip_zero or fused (as make_optimizer builds it),
    the step takes the scaler's loss scale and overflow flag (`_step_supports_amp_scaling`, as
    torch's fused Adam does): the gradients are unscaled inside the kernels and an overflowed step
    is skipped on the device, so GradScaler.step does not wait for the GPU. Otherwise GradScaler
    unscales every gradient first (unscale_) and skips the step when one holds inf or NaN, as for
    any optimiser; either way a zero gradient stays exactly zero. state_dict() holds tensors
    and plain values only (torch.load(weights_only=True) reads it). load_state_dict() also takes
    torch.optim.Adam's state over the same parameters in the same order, whatever its groups
    (checkpoints of runs before this optimiser): each skip-zero entry starts from that Adam's
    count, and the settings stay this optimiser's.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, *, skip_zero: bool = False,
                 fused: bool | None = None):
        _check_settings("SkipZeroAdam", lr, betas[0], betas[1], eps)
        if weight_decay < 0:
            raise ValueError(f"SkipZeroAdam: weight_decay must be >= 0, got {weight_decay}")
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                        weight_decay=weight_decay, skip_zero=skip_zero, fused=fused)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["skip_zero"] and group["weight_decay"] != 0:
            raise ValueError("SkipZeroAdam: a skip_zero group takes no weight_decay (it would "
                             "make every entry's gradient nonzero)")
        if group["fused"] and not group["skip_zero"]:
            supported = _get_fused_kernels_supported_devices()
            for p in group["params"]:
                if not (p.is_floating_point() and p.device.type in supported):
                    raise RuntimeError(f"SkipZeroAdam: fused=True needs floating-point params "
                                       f"on {supported}, got {p.dtype} on {p.device.type}")

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("skip_zero", False)
            group.setdefault("fused", None)
            group.setdefault("weight_decay", 0.0)

    @property
    def _step_supports_amp_scaling(self) -> bool:
        """Whether GradScaler may hand step() its scale and overflow flag (set as the attributes
        grad_scale and found_inf) instead of unscaling and checking on the host: every group's
        kernel takes them (adam_step; torch's fused Adam)."""
        return all(g["skip_zero"] or g["fused"] for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # Set by torch.amp.GradScaler.step for the duration of this call (see the class doc).
        scaler = dict(grad_scale=getattr(self, "grad_scale", None),
                      found_inf=getattr(self, "found_inf", None))
        for group in self.param_groups:
            if group["skip_zero"]:
                self._skip_zero_step(group, **scaler)
            else:
                self._dense_step(group, **scaler)
        return loss

    def _with_grads(self, group: dict[str, Any]) -> list[torch.Tensor]:
        params = [p for p in group["params"] if p.grad is not None]
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("SkipZeroAdam does not take sparse gradients (torch.sparse); a "
                               "dense gradient with zeros is what skip_zero groups skip")
        return params

    def _skip_zero_step(self, group: dict[str, Any], grad_scale: torch.Tensor | None,
                        found_inf: torch.Tensor | None) -> None:
        beta1, beta2 = group["betas"]
        for p in self._with_grads(group):
            state = self.state[p]
            if not state:
                moments = state_dtype(p.dtype)
                state["step"] = torch.zeros(p.shape, dtype=torch.int32, device=p.device)
                state["exp_avg"] = torch.zeros(p.shape, dtype=moments, device=p.device)
                state["exp_avg_sq"] = torch.zeros(p.shape, dtype=moments, device=p.device)
            adam_step(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"],
                      lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                      grad_scale=_on(grad_scale, p), found_inf=_on(found_inf, p))

    def _dense_step(self, group: dict[str, Any], grad_scale: torch.Tensor | None,
                    found_inf: torch.Tensor | None) -> None:
        params = self._with_grads(group)
        if not params:
            return
        for p in params:
            state = self.state[p]
            if not state:  # torch.optim.Adam's layout: step on the device only when fused
                state["step"] = (torch.zeros((), dtype=torch.float32, device=p.device)
                                 if group["fused"] else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        torch_adam(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                   [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                   fused=group["fused"], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
                   weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                   grad_scale=grad_scale, found_inf=found_inf)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = self._own_layout(state_dict)
        # torch casts each saved state tensor but "step" to its parameter's dtype (the float32
        # moments of a half table would round to half) and leaves "step" where it was saved:
        # skip-zero states are rebuilt from the saved tensors, checked before anything loads.
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = ((p, g) for g in self.param_groups for p in g["params"])
        skip_zero: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        # (Groups of other sizes: torch's load_state_dict below says so.)
        for index, (saved_id, (p, group)) in enumerate(zip(saved_ids, params, strict=False)):
            if group["skip_zero"] and saved_id in state_dict["state"]:
                skip_zero[p] = _skip_zero_state(p, state_dict["state"][saved_id], index)
        super().load_state_dict(state_dict)
        for p, state in skip_zero.items():
            self.state[p] = state

    def _own_layout(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """state_dict as this optimiser's groups: as it is when saved by a SkipZeroAdam, else (a
        torch.optim.Adam's) its parameters in order, split into this optimiser's groups."""
        saved_groups = state_dict["param_groups"]
        if all("skip_zero" in g for g in saved_groups):
            return state_dict
        saved_ids = [i for g in saved_groups for i in g["params"]]
        sizes = [len(g["params"]) for g in self.param_groups]
        if len(saved_ids) != sum(sizes):
            raise ValueError(f"SkipZeroAdam.load_state_dict: the saved optimiser (torch.optim.Adam"
                             f"'s layout) holds {len(saved_ids)} parameters, this one "
                             f"{sum(sizes)}; the checkpoint belongs to another model")
        if any(g.get("amsgrad") for g in saved_groups):
            raise ValueError("SkipZeroAdam.load_state_dict: the saved torch.optim.Adam used "
                             "amsgrad, whose state this optimiser does not keep")
        groups, start = [], 0
        for group, size in zip(self.param_groups, sizes, strict=True):
            settings = {k: v for k, v in group.items() if k != "params"}
            groups.append({**settings, "params": saved_ids[start:start + size]})
            start += size
        return {"state": state_dict["state"], "param_groups": groups}
