"""Where the public ops (Python) and the compiled ops (csrc/checks.h) check the same argument, they
say the same sentence: one bad argument, both callers, the messages compared word for word."""

from __future__ import annotations

import pytest
import torch

from nerfx.ops import BackendError, adam_step, composite_rays, hash_encode, march_rays
from nerfx.ops._checks import check_shape, dtype_names
from nerfx.ops.hashgrid import BACKENDS as HASH_BACKENDS
from nerfx.specs import GridGeometry, grid_layout


@pytest.fixture(autouse=True)
def compiled_ops():
    try:
        HASH_BACKENDS.select("cpu", torch.device("cpu"), (torch.float32,))  # loads nerfx._C
    except BackendError as exc:
        pytest.skip(str(exc))


def message(call) -> str:
    """The first line of the error the call raises (C++ errors may add context below it)."""
    with pytest.raises((RuntimeError, ValueError, TypeError)) as info:
        call()
    return str(info.value).splitlines()[0]


HASH = dict(n_levels=3, n_features_per_level=2, log2_hashmap_size=6, base_resolution=2,
            per_level_scale=1.5)


def hash_case(x, params):
    layout = grid_layout(3, 3, 2, 6, 2, 1.5)
    return (lambda: hash_encode(x, params, backend="cpu", **HASH),
            lambda: torch.ops.nerfx.hash_encode(x, params, list(layout.offsets),
                                                list(layout.resolutions), 2))


def composite_case(sigmas=None, rgbs=None, t_start=None, t_end=None, offsets=None):
    args = dict(sigmas=torch.rand(5), rgbs=torch.rand(5, 3), t_start=torch.zeros(5),
                t_end=torch.ones(5), offsets=torch.tensor([0, 2, 5]))
    given = dict(sigmas=sigmas, rgbs=rgbs, t_start=t_start, t_end=t_end, offsets=offsets)
    args.update({k: v for k, v in given.items() if v is not None})
    return (lambda: composite_rays(**args, backend="cpu"),
            lambda: torch.ops.nerfx.composite_rays(*args.values(), 1e-4))


def march_case(rays_d=None, bits=None, resolution=8):
    rays_d = torch.ones(4, 3) if rays_d is None else rays_d
    bits = torch.zeros(2 * resolution**3 // 8, dtype=torch.uint8) if bits is None else bits
    geometry = GridGeometry((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resolution, 2)
    o = torch.zeros(4, 3)
    return (lambda: march_rays(o, rays_d, bits, geometry, step_size=0.01, backend="cpu"),
            lambda: torch.ops.nerfx.march_rays(o, rays_d, torch.zeros(4), torch.ones(4),
                                               torch.zeros(4), bits, [0.5] * 3, [0.5] * 3,
                                               resolution, 2, 0.01, 0.0, 16))


def adam_case(param=None, grad=None, exp_avg=None, step=None, grad_scale=None):
    param = torch.zeros(8) if param is None else param
    grad = torch.ones(8) if grad is None else grad
    exp_avg = torch.zeros(8) if exp_avg is None else exp_avg
    step = torch.zeros(8, dtype=torch.int32) if step is None else step
    state = (param, grad, exp_avg, torch.zeros(8), step)
    return (lambda: adam_step(*state, lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15,
                              grad_scale=grad_scale, backend="cpu"),
            lambda: torch.ops.nerfx.adam_step(*state, 1e-2, 0.9, 0.99, 1e-15, grad_scale, None))


CASES = {
    "hash_encode params size": hash_case(torch.rand(4, 3), torch.zeros(11)),
    "composite_rays rgbs shape": composite_case(rgbs=torch.rand(5, 2)),
    "composite_rays t_start size": composite_case(t_start=torch.zeros(4)),
    "composite_rays t_end dtype": composite_case(t_end=torch.ones(5, dtype=torch.float64)),
    "composite_rays offsets dtype": composite_case(offsets=torch.tensor([0, 2, 5]).int()),
    "composite_rays no rays": composite_case(offsets=torch.tensor([0])),
    "march_rays rays_d shape": march_case(rays_d=torch.ones(4, 2)),
    "march_rays bitfield size": march_case(bits=torch.zeros(7, dtype=torch.uint8)),
    "march_rays bitfield dtype": march_case(bits=torch.zeros(128, dtype=torch.int32)),
    "march_rays cascades": march_case(resolution=6),
    "adam_step grad shape": adam_case(grad=torch.ones(7)),
    "adam_step grad dtype": adam_case(grad=torch.ones(8, dtype=torch.float64)),
    "adam_step exp_avg dtype": adam_case(exp_avg=torch.zeros(8, dtype=torch.float64)),
    "adam_step step dtype": adam_case(step=torch.zeros(8, dtype=torch.int64)),
    "adam_step contiguous": adam_case(param=torch.zeros(16)[::2]),
    "adam_step grad_scale": adam_case(grad_scale=torch.ones(3)),
}


@pytest.mark.parametrize("case", CASES)
def test_python_and_cpp_say_the_same(case):
    public, direct = CASES[case]
    said = message(public)
    assert said == message(direct)
    assert said.startswith(case.split()[0] + ": ")  # names the op


def test_the_words_of_the_helpers():
    assert dtype_names([torch.float32, torch.float64, torch.float16]) == (
        "torch.float32, torch.float64 or torch.float16")
    with pytest.raises(ValueError, match=r"^op: a must be \[S, 3\] = \[5, 3\], got \[5, 2\]$"):
        check_shape("op", "a", torch.zeros(5, 2), "[S, 3]", (5, 3))
    with pytest.raises(ValueError, match=r"^op: a must be \[N, 3\], got \[4\]$"):
        check_shape("op", "a", torch.zeros(4), "[N, 3]", (-1, 3))
    with pytest.raises(ValueError, match=r"^op: a must be \[3\], got \[4\]$"):
        check_shape("op", "a", torch.zeros(4), "[3]", (3,))
