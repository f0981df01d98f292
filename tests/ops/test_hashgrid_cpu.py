"""The cpu backend's hash grid beyond what every backend is held to (tests/ops/test_hashgrid.py):
its two sets of loops (AVX2 for float32 x and parameters, D = 3, F = 2; portable for the rest)
against the reference and against each other, and the parameter gradient alone, split into
row-owning tasks, and the forward, the same bits on any thread count."""

from __future__ import annotations

import pytest
import torch

from nerfx import ref
from nerfx.ops import hash_encode
from nerfx.ref.hashgrid import grid_layout
from tests.ops.conftest import cpu_has_avx2
from tests.ops.test_hashgrid import config, make_inputs, raw_backward

# A small grid, and one with hashed levels whose gradient (4.5 MB) gets the huge-page advice.
GRIDS = {"small": config(2), "hashed": config(2, n_levels=6, log2_hashmap_size=17,
                                               base_resolution=16, per_level_scale=2.0)}

# Point counts around the AVX2 loops' steps of 8 (partial, exact, one over, several).
AWKWARD_SIZES = [1, 7, 8, 9, 15, 17, 1003]


def edge_points(dims: int, cfg: dict) -> torch.Tensor:
    """0, 1, points outside [0, 1] and exact cell boundaries of every level, float32 [M, dims]."""
    layout = grid_layout(dims, cfg["n_levels"], 2, cfg["log2_hashmap_size"],
                         cfg["base_resolution"], cfg["per_level_scale"])
    coords = [0.0, 1.0, -0.25, 1.5, 0.5, -0.0]
    coords += [k / res for res in layout.resolutions for k in (1, res - 1)]
    values = torch.tensor(coords, dtype=torch.float32)
    return torch.stack([values.roll(d) for d in range(dims)], dim=-1)


def encode_with_grads(x, params, cfg, grad_out):
    """cpu forward and the gradients asked for (x's only where it requires one)."""
    out = hash_encode(x, params, backend="cpu", **cfg)
    inputs = (x, params) if x.requires_grad else (params,)
    return (out, *torch.autograd.grad(out, inputs, grad_out))


@pytest.mark.parametrize("grid", ["small", "hashed"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["params-grad", "both-grads"])
def test_cpu_paths_match_the_reference(cpu_path, grid, x_grad):
    """Both loops, float32 D = 3 F = 2 (the AVX2 case), at point counts around a step of 8 and at
    edge points, forward and gradients (the parameter gradient alone, the training case, or
    with the input gradient), against the reference."""
    cfg = GRIDS[grid]
    for n in AWKWARD_SIZES + [0]:
        x, params = make_inputs(n, 3, cfg, seed=n)
        x = torch.cat([x.detach(), edge_points(3, cfg)]) if n == 0 else x.detach()
        x.requires_grad_(x_grad)
        grad_out = torch.randn(x.shape[0], cfg["n_levels"] * 2,
                               generator=torch.Generator().manual_seed(n))
        got = encode_with_grads(x, params, cfg, grad_out)
        leaf_x, leaf_p = x.detach().requires_grad_(x_grad), params.detach().requires_grad_()
        out = ref.hash_encode(leaf_x, leaf_p, **cfg)
        want = (out, *torch.autograd.grad(out, (leaf_x, leaf_p) if x_grad else (leaf_p,),
                                          grad_out))
        names = ("out", "grad_x", "grad_params") if x_grad else ("out", "grad_params")
        for name, a, b in zip(names, got, want, strict=True):
            tol = 1e-4 if name == "grad_x" else 1e-5  # x's gradient: res * dot, larger
            torch.testing.assert_close(a, b, rtol=tol, atol=tol,
                                       msg=lambda m, k=name, size=n: f"{k}, n={size}: {m}")


@pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2 loops")
@pytest.mark.parametrize("grid", ["small", "hashed"])
def test_cpu_paths_agree_bit_for_bit(monkeypatch, grid):
    """The AVX2 loops round as the portable ones do, in the same order (no fused multiply-add):
    outputs and parameter gradients are the same bits."""
    cfg = GRIDS[grid]
    x, params = make_inputs(1003, 3, cfg, seed=5)
    x = torch.cat([x.detach(), edge_points(3, cfg)])
    grad_out = torch.randn(x.shape[0], cfg["n_levels"] * 2,
                           generator=torch.Generator().manual_seed(6))
    runs = {}
    for path in ("avx2", "portable"):
        monkeypatch.setenv("NERFX_CPU_PATH", path)
        runs[path] = encode_with_grads(x, params, cfg, grad_out)
    for a, b in zip(runs["avx2"], runs["portable"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2 loops")
def test_cpu_paths_are_different_loops(monkeypatch):
    """Equal bits cannot tell the loops apart, a NaN can: its point's corner lands in different
    rows (the AVX2 loops clamp it into the last cell; the portable loops convert NaN to an
    integer, 0 on x86-64), so its NaN gradient lands elsewhere. Proof that the variable reaches
    the launchers, forward (auto, avx2) and backward alike."""
    cfg = GRIDS["hashed"]
    x, params = make_inputs(16, 3, cfg, seed=7)
    x = x.detach().clone()
    x[3, 1] = float("nan")
    grad_out = torch.ones(16, cfg["n_levels"] * 2)
    nan_rows = {}
    for path in ("auto", "avx2", "portable"):
        monkeypatch.setenv("NERFX_CPU_PATH", path)
        out, grad = encode_with_grads(x, params, cfg, grad_out)
        assert out[3].isnan().all() and not out[torch.arange(16) != 3].isnan().any()
        nan_rows[path] = grad.isnan()
    assert torch.equal(nan_rows["auto"], nan_rows["avx2"])
    assert not torch.equal(nan_rows["avx2"], nan_rows["portable"])


@pytest.mark.parametrize("grid,n_points", [("small", 300), ("hashed", 3000)])
def test_cpu_parameter_gradient_alone_is_the_same_bits_on_any_thread_count(cpu_path, grid,
                                                                           n_points):
    """Without an input gradient the cpu backward gives each (level, row range) task its rows:
    the sums, in point order, are those of the pass that also computes the input gradient, bit
    for bit, on 1 to 9 threads (9 threads with 5 levels split levels into row ranges), and
    match the reference; on both loops."""
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


@pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2 loops")
def test_the_avx2_gradient_reads_a_large_grad_out_in_place(monkeypatch):
    """Up to 64 MB the AVX2 parameter gradient reads a level-major copy of grad_out; past it
    (here 2^19 + 5 points at 16 levels: 64 MB + 640 B) it reads grad_out in place: the same
    bits as the portable loops either way (the copy's side: the tests above)."""
    cfg = config(2, n_levels=16, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.3)
    n = 2**19 + 5
    x, params = make_inputs(n, 3, cfg, seed=8)
    x, params = x.detach(), params.detach()
    grad_out = torch.randn(n, 32, generator=torch.Generator().manual_seed(9))
    grads = {}
    for path in ("avx2", "portable"):
        monkeypatch.setenv("NERFX_CPU_PATH", path)
        grads[path], _ = raw_backward("cpu", grad_out, x, params, cfg, False, True)
    assert torch.equal(grads["avx2"], grads["portable"])


@pytest.mark.parametrize("grid", ["small", "hashed"])
def test_cpu_forward_is_the_same_bits_on_any_thread_count(cpu_path, grid):
    """The forward splits the points between the threads in one parallel region (each thread
    its range at every level, then, on the AVX2 loops, its rows moved to out): at a point count
    that spans several ranges and no step of 8 (5003), the outputs are the same bits on 1 to 9
    threads and match the reference."""
    cfg = GRIDS[grid]
    x, params = make_inputs(5003, 3, cfg, seed=11)
    x, params = x.detach(), params.detach()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = hash_encode(x, params, backend="cpu", **cfg)
        for n in (2, 3, 9):
            torch.set_num_threads(n)
            assert torch.equal(hash_encode(x, params, backend="cpu", **cfg), want), f"{n} threads"
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(want, ref.hash_encode(x, params, **cfg), rtol=1e-5, atol=1e-5)
