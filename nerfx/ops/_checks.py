"""Argument checks of the public ops, in the words of the compiled ops' own (csrc/checks.h).

Each check raises with one sentence naming the op and the argument:

    "<op>: <name> must be <what>, got <what>"                 TypeError for types, else ValueError
    "<op>: <name> is on <device> but <ref> is on <device>"   ValueError

dtypes written as str(dtype) writes them (torch.float32), shapes as lists ([N, 3] = [5, 3]).

The compiled ops (nerfx::<op>) check every argument themselves, for callers of torch.ops and for
compiled graphs. The public functions check in Python only what must be known before a backend
is chosen (a tensor, its device and dtype) and what the torch and triton backends, which never
reach C++, need; where Python and C++ check the same thing, they say it in the same words (these
helpers mirror csrc/checks.h), so an error reads the same whichever backend runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ANY", "check_contiguous", "check_device", "check_dtype", "check_floating",
           "check_same_shape", "check_shape", "check_tensor", "dtype_names"]

ANY = -1  # a size an expected shape leaves open (the N of [N, 3]), as kAny in C++


def dtype_names(dtypes: Sequence[torch.dtype]) -> str:
    """"torch.float32, torch.float64 or torch.float16"."""
    names = [str(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_tensor(op: str, name: str, value: object) -> None:
    """"hash_encode: x must be a torch.Tensor, got list" (Python only: C++ takes tensors)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(value).__name__}")


def check_floating(op: str, name: str, t: torch.Tensor) -> None:
    """"hash_encode: x must be a floating-point tensor, got torch.int64" (any float: the torch
    backend takes them all; the compiled ops check their exact dtypes with check_dtype)."""
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def check_dtype(op: str, name: str, t: torch.Tensor, dtypes: Sequence[torch.dtype],
                note: str = "") -> None:
    """"composite_rays: t_end must be torch.float64 like t_start, got torch.float32"."""
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: {name} must be {dtype_names(dtypes)}{note}, got {t.dtype}")


def check_shape(op: str, name: str, t: torch.Tensor, label: str, sizes: Sequence[int]) -> None:
    """t has the shape `label` describes (e.g. "[S, 3]"), whose sizes are `sizes` (ANY: any);
    where every size is known the message gives them too:
    "composite_rays: rgbs must be [S, 3] = [5, 3], got [5, 2]"."""
    if t.dim() == len(sizes) and all(s == ANY or t.shape[d] == s for d, s in enumerate(sizes)):
        return
    expected = label
    if ANY not in sizes and str(list(sizes)) != label:
        expected += f" = {list(sizes)}"
    raise ValueError(f"{op}: {name} must be {expected}, got {list(t.shape)}")


def check_same_shape(op: str, name: str, t: torch.Tensor, ref_name: str,
                     ref: torch.Tensor) -> None:
    """"adam_step: grad must have param's shape [8], got [7]"."""
    if t.shape != ref.shape:
        raise ValueError(f"{op}: {name} must have {ref_name}'s shape {list(ref.shape)}, got "
                         f"{list(t.shape)}")


def check_device(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """"hash_encode: params is on meta but x is on cpu"."""
    if t.device != ref.device:
        raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_contiguous(op: str, name: str, t: torch.Tensor, why: str) -> None:
    """"adam_step: exp_avg must be contiguous (it is updated in place)"."""
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous ({why})")
