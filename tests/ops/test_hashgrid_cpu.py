"""The cpu backend's hash-grid backward beyond what every backend is held to
(tests/ops/test_hashgrid.py): the parameter gradient alone, split into row-owning tasks."""

from __future__ import annotations

import pytest
import torch

from nerfx import ref
from tests.ops.test_hashgrid import config, make_inputs, raw_backward

# A small grid, and one with hashed levels whose gradient (4.5 MB) gets the huge-page advice.
GRIDS = {"small": config(2), "hashed": config(2, n_levels=6, log2_hashmap_size=17,
                                               base_resolution=16, per_level_scale=2.0)}


@pytest.mark.parametrize("grid,n_points", [("small", 300), ("hashed", 3000)])
def test_cpu_parameter_gradient_alone_is_the_same_bits_on_any_thread_count(grid, n_points):
    """Without an input gradient the cpu backward gives each (level, row range) task its rows:
    the sums, in point order, are those of the pass that also computes the input gradient, bit
    for bit, on 1 to 9 threads (9 threads with 5 levels split levels into row ranges), and
    match the reference."""
    cfg = GRIDS[grid]
    x, params = make_inputs(n_points, 3, cfg)
    x, params = x.detach(), params.detach()
    grad_out = torch.randn(n_points, cfg["n_levels"] * 2,
                           generator=torch.Generator().manual_seed(4))
    want, _ = raw_backward("cpu", grad_out, x, params, cfg, True, True)  # the combined pass
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 9):
            torch.set_num_threads(n)
            got, _ = raw_backward("cpu", grad_out, x, params, cfg, False, True)
            assert torch.equal(got, want), f"{n} threads"
    finally:
        torch.set_num_threads(threads)
    leaf = params.clone().requires_grad_()
    (ref_grad,) = torch.autograd.grad(ref.hash_encode(x, leaf, **cfg), leaf, grad_out)
    torch.testing.assert_close(want, ref_grad, rtol=1e-5, atol=1e-5)
