"""Hash-grid encoding: every backend against the reference (nerfx.ref.hashgrid), which
gradients are computed, determinism (checks, backend choice and torch.compile are in
tests/ops/test_hashgrid_api.py)."""

from __future__ import annotations

import math

import pytest
import torch

from nerfx import ref
from nerfx.ops import HashGridEncoding, hash_encode, use_backend
from nerfx.ref.hashgrid import grid_layout
from tests.helpers import (
    BACKEND_DEVICES,
    assert_lowprec_close,
    requires_cuda,
)

# Small grids with both dense and hashed levels (T = 2^10 rows; levels past 9 cells hash in 3-D).
SMALL = dict(n_levels=5, log2_hashmap_size=10, base_resolution=3, per_level_scale=1.7)


def config(n_features: int = 2, **overrides) -> dict:
    return {**SMALL, "n_features_per_level": n_features, **overrides}


def make_inputs(n: int, dims: int, cfg: dict, dtype=torch.float32, params_dtype=None,
                device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    layout = grid_layout(dims, cfg["n_levels"], cfg["n_features_per_level"],
                         cfg["log2_hashmap_size"], cfg["base_resolution"],
                         cfg["per_level_scale"])
    x = torch.rand(n, dims, generator=gen, dtype=torch.float64)
    params = torch.randn(layout.n_params, generator=gen, dtype=torch.float64)
    x = x.to(device=device, dtype=dtype).requires_grad_()
    params = params.to(device=device, dtype=params_dtype or dtype).requires_grad_()
    return x, params


def run_both(backend: str, x, params, cfg, grad_out_seed=1):
    """Forward and gradients of the backend and of the reference, on the same inputs."""
    results = []
    for fn in (lambda a, b: hash_encode(a, b, backend=backend, **cfg),
               lambda a, b: ref.hash_encode(a, b, **cfg)):
        out = fn(x, params)
        gen = torch.Generator().manual_seed(grad_out_seed)
        grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
        grads = torch.autograd.grad(out, (x, params), grad_out, allow_unused=True)
        results.append((out, *grads))
    return results


def assert_results_close(got, want, rtol, atol):
    for name, a, b in zip(("out", "grad_x", "grad_params"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def sizes_for(backend: str, device: str) -> list[int]:
    # The Triton interpreter costs ~1 ms per program, so it gets fewer points.
    return [0, 1, 7, 200] if (backend == "triton" and device == "cpu") else [0, 1, 7, 1000]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("n_features", [1, 2, 4, 8])
def test_matches_reference_fp32(backend, device, dims, n_features):
    cfg = config(n_features)
    for n in sizes_for(backend, device):
        x, params = make_inputs(n, dims, cfg, device=device, seed=n)
        got, want = run_both(backend, x, params, cfg)
        assert got[0].shape == (n, cfg["n_levels"] * n_features)
        assert_results_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("n_levels", [1, 3, 8])
def test_level_counts_fp64(backend, device, n_levels):
    cfg = config(2, n_levels=n_levels)
    x, params = make_inputs(77, 3, cfg, dtype=torch.float64, device=device)
    got, want = run_both(backend, x, params, cfg)
    assert_results_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_points_on_edges_and_cell_boundaries(backend, device, dims):
    """0, 1, points outside [0, 1] (clamped) and exact cell boundaries of every level."""
    cfg = config(2)
    layout = grid_layout(dims, 5, 2, 10, 3, 1.7)
    coords = [0.0, 1.0, -0.25, 1.5, 0.5]
    coords += [k / res for res in layout.resolutions for k in (1, res - 1)]
    values = torch.tensor(coords, dtype=torch.float64)
    x = torch.stack([values.roll(d) for d in range(dims)], dim=-1).to(device).requires_grad_()
    _, params = make_inputs(1, dims, cfg, dtype=torch.float64, device=device)
    got, want = run_both(backend, x, params, cfg)
    assert_results_close(got, want, rtol=1e-10, atol=1e-10)
    clamped = hash_encode(x.detach().clamp(0, 1), params, backend=backend, **cfg)
    torch.testing.assert_close(got[0], clamped)
    outside = (x.detach() < 0) | (x.detach() > 1)
    assert (got[1][outside] == 0).all(), "no gradient flows through the clamp"


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_gradcheck_fp64(backend, device, dims):
    # Two levels, one dense and one hashed, of at most 64 rows: few parameters to perturb.
    cfg = config(2, n_levels=2, log2_hashmap_size=6, base_resolution=2, per_level_scale=2.0)
    x, params = make_inputs(4, dims, cfg, dtype=torch.float64, device=device)
    x = (x.detach() * 0.9 + 0.05).requires_grad_()  # away from the clamp's kinks
    # The Triton interpreter takes ~0.1 s a launch: it gets gradcheck's random-projection mode.
    interpreted = backend == "triton" and device == "cpu"
    assert torch.autograd.gradcheck(lambda a, b: hash_encode(a, b, backend=backend, **cfg),
                                    (x, params), eps=1e-6, atol=1e-6, fast_mode=interpreted)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("dims", [2, 3])
def test_half_params_within_torch_error(backend, device, dims):
    """fp16 tables: the error against fp64 stays within twice that of the reference in fp16."""
    cfg = config(4)
    n = sizes_for(backend, device)[-1]
    x, params = make_inputs(n, dims, cfg, params_dtype=torch.float16, device=device)
    got, lowprec = run_both(backend, x, params, cfg)
    x64 = x.detach().double().requires_grad_()
    p64 = params.detach().double().requires_grad_()
    (out64, gx64, gp64), = [r for r in run_both("torch", x64, p64, cfg)[:1]]
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float16
    assert_lowprec_close(got[0], lowprec[0], out64)
    assert_lowprec_close(got[1], lowprec[1], gx64, atol=1e-4)
    assert_lowprec_close(got[2], lowprec[2], gp64, atol=1e-3)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_batch_shape_and_non_contiguous_input(backend, device):
    cfg = config(2)
    x, params = make_inputs(60, 3, cfg, device=device)
    x_t = x.detach().t().contiguous().t()  # same values, transposed strides
    x_batched = x.detach().reshape(3, 4, 5, 3)
    assert not x_t.is_contiguous()
    out = hash_encode(x.detach(), params, backend=backend, **cfg)
    torch.testing.assert_close(hash_encode(x_t, params, backend=backend, **cfg), out)
    batched = hash_encode(x_batched, params, backend=backend, **cfg)
    assert batched.shape == (3, 4, 5, out.shape[-1])
    torch.testing.assert_close(batched.reshape(60, -1), out)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_module_paper_config(backend, device):
    enc = HashGridEncoding().to(device)
    assert enc.output_dim == 32
    assert enc.layout.resolutions[0] == 16 and enc.layout.resolutions[-1] == 2048
    assert enc.layout.dense[0] and not enc.layout.dense[-1]
    assert enc.layout.offsets[-1] - enc.layout.offsets[-2] == 2**19
    assert enc.params.abs().max() <= 1e-4
    x = torch.rand(2, 50, 3, device=device)
    with use_backend(backend):
        out = enc(x)
    assert out.shape == (2, 50, 32)
    out.square().sum().backward()
    assert enc.params.grad is not None and enc.params.grad.abs().sum() > 0


def test_module_half_and_2d():
    enc = HashGridEncoding(n_input_dims=2, n_levels=4, log2_hashmap_size=12, dtype=torch.float16)
    out = enc(torch.rand(10, 2))
    assert out.dtype == torch.float32 and out.shape == (10, 8)
    assert math.isclose(enc.config["per_level_scale"], (2048 / 16) ** (1 / 3))
    with pytest.raises(ValueError, match=r"\[\.\.\., 2\]"):
        enc(torch.rand(10, 3))


# --- which gradients, determinism ------------------------------------------------------------

KERNEL_BACKENDS = [p for p in BACKEND_DEVICES if not p.id.startswith("torch")]


def raw_backward(backend, grad_out, x, params, cfg, needs_x, needs_params):
    """The backend's backward kernel called directly. -> (grad_params, grad_x), where a gradient
    not asked for is None (triton) or [0] (the registered op)."""
    layout = grid_layout(x.shape[1], cfg["n_levels"], cfg["n_features_per_level"],
                         cfg["log2_hashmap_size"], cfg["base_resolution"],
                         cfg["per_level_scale"])
    if backend == "triton":
        from nerfx.kernels import hashgrid as kernels

        return kernels.backward(grad_out, x, params, layout, needs_x_grad=needs_x,
                                needs_params_grad=needs_params)
    hash_encode(x[:1], params, backend=backend, **cfg)  # loads nerfx._C
    gp, gx = torch.ops.nerfx.hash_encode_backward(
        grad_out, x, params, list(layout.offsets), list(layout.resolutions),
        layout.n_features_per_level, needs_x, needs_params)
    return gp, gx


@pytest.mark.parametrize("backend,device", KERNEL_BACKENDS)
def test_backward_computes_only_the_gradients_asked_for(backend, device):
    """needs_input_grad is honoured for x and for the parameters: the kernels skip what is not
    wanted (no parameter-sized buffer when only x needs a gradient), and autograd agrees."""
    cfg = config(2)
    x, params = make_inputs(50, 3, cfg, device=device)
    x, params = x.detach(), params.detach()
    grad_out = torch.randn(50, cfg["n_levels"] * 2, generator=torch.Generator().manual_seed(3))
    grad_out = grad_out.to(device)
    want_p, want_x = raw_backward(backend, grad_out, x, params, cfg, True, True)
    only_x = raw_backward(backend, grad_out, x, params, cfg, True, False)
    only_p = raw_backward(backend, grad_out, x, params, cfg, False, True)
    if backend == "triton":
        assert only_x[0] is None and only_p[1] is None
    else:  # the op returns [0] for a gradient not computed
        assert only_x[0].numel() == 0 and only_p[1].numel() == 0
    torch.testing.assert_close(only_x[1], want_x)
    torch.testing.assert_close(only_p[0], want_p)
    # Through autograd, with each input alone requiring a gradient.
    for needs_x in (True, False):
        xa, pa = x.clone().requires_grad_(needs_x), params.clone().requires_grad_(not needs_x)
        out = hash_encode(xa, pa, backend=backend, **cfg)
        (got,) = torch.autograd.grad(out, xa if needs_x else pa, grad_out)
        torch.testing.assert_close(got, want_x if needs_x else want_p)


@pytest.fixture
def deterministic():
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("backend,device", [p for p in KERNEL_BACKENDS if p.id in
                                            ("cpu", "triton-interp")])
def test_cpu_backward_is_deterministic(backend, device, deterministic):
    """On the CPU the compiled backward owns each level's rows (no atomics) and sums in a fixed
    order, and the interpreter runs programs one at a time: both run under
    torch.use_deterministic_algorithms(True) and repeat bit for bit."""
    torch.use_deterministic_algorithms(True)
    cfg = config(2)
    x, params = make_inputs(300 if backend == "cpu" else 100, 3, cfg, device=device)
    first, second = (run_both(backend, x, params, cfg)[0] for _ in range(2))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_backward_tells_deterministic_mode(backend, deterministic):
    """Atomics make the GPU backwards nondeterministic: torch.use_deterministic_algorithms(True)
    users get an error naming the op (a warning with warn_only=True); the forward still runs."""
    cfg = config(2)
    x, params = make_inputs(100, 3, cfg, device="cuda")
    torch.use_deterministic_algorithms(True)
    out = hash_encode(x, params, backend=backend, **cfg)
    with pytest.raises(RuntimeError, match="hash_encode_backward"):
        out.sum().backward()
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = hash_encode(x, params, backend=backend, **cfg)
    with pytest.warns(UserWarning, match="hash_encode_backward"):
        out.sum().backward()
