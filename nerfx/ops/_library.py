"""One helper registers an op's torch.library pieces: fake kernels, autograd, and the refusal of a
second derivative.

Every kernel op `nerfx::<op>` (schema from csrc/ext.cpp or from torch.library.custom_op) gets
the same three registrations, so torch.compile(fullgraph=True) traces it (fake kernels),
autograd and gradcheck see its backward op, and differentiating that backward again fails with
one clear message instead of a silent zero:

    register_op("hash_encode", fake=..., setup_context=..., backward=...,
                backward_op="hash_encode_backward", fake_backward=...,
                no_second_order="the cpu and cuda backends", instead="backend='torch'")
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["register_op"]


def _no_setup(ctx, inputs, output) -> None:
    return None


def _refuse_second_order(label: str, what: str, instead: str) -> Callable:
    def backward(ctx, *grads):
        raise NotImplementedError(f"{label}: second-order gradients are not implemented by "
                                  f"{what}; use {instead} for them")

    return backward


def register_op(op: str, *, fake: Callable, setup_context: Callable | None = None,
                backward: Callable | None = None, backward_op: str | None = None,
                fake_backward: Callable | None = None, label: str | None = None,
                no_second_order: str = "this backend", instead: str = "backend='torch'"
                ) -> None:
    """Registers nerfx::<op>'s fake kernel and, with `backward`, its autograd formula; with
    `backward_op`, that op's fake kernel and an autograd formula refusing second derivatives
    ("<label>: second-order gradients are not implemented by <no_second_order>; use <instead>").
    An op without `backward` (e.g. march_rays, not differentiable) gets its fake kernel only."""
    name = f"nerfx::{op}"
    torch.library.register_fake(name)(fake)
    if backward is not None:
        torch.library.register_autograd(name, backward, setup_context=setup_context)
    if backward_op is not None:
        if fake_backward is None:
            raise ValueError(f"register_op({op!r}): backward_op needs fake_backward")
        torch.library.register_fake(f"nerfx::{backward_op}")(fake_backward)
        torch.library.register_autograd(
            f"nerfx::{backward_op}",
            _refuse_second_order(label or op, no_second_order, instead),
            setup_context=_no_setup)
