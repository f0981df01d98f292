"""Volume compositing: hand-computed cases, every backend against the reference, packed = padded."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nerfx.ops import BackendError, composite_rays
from nerfx.ref import composite as ref
from tests.helpers import BACKEND_DEVICES, assert_lowprec_close, requires_cuda

BACKENDS = BACKEND_DEVICES


def packed(counts: list[int], dtype=torch.float64, device="cpu", seed=0, density=3.0):
    """Random rays with the given sample counts: sorted, non-overlapping intervals per ray."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(counts)
    offsets = torch.zeros(len(counts) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    sigmas = torch.rand(n, generator=gen, dtype=torch.float64) * density
    rgbs = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    deltas = torch.rand(n, generator=gen, dtype=torch.float64) * 0.2 + 0.01
    t_end = torch.zeros(n, dtype=torch.float64)
    for r in range(len(counts)):
        a, b = offsets[r].item(), offsets[r + 1].item()
        t_end[a:b] = 2.0 + deltas[a:b].cumsum(0)
    t_start = t_end - deltas
    to = dict(dtype=dtype, device=device)
    return (sigmas.to(**to), rgbs.to(**to), t_start.to(**to), t_end.to(**to),
            offsets.to(device))


# --- hand-computed cases ----------------------------------------------------------------------

@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_computed_rays(backend, device, dtype, cpu_path):
    """Five rays: one sample; two samples; an opaque first sample; no samples; a faint one."""
    sigmas = torch.tensor([1.0, 2.0, 0.5, 1e4, 1.0, 0.1], dtype=torch.float64)
    rgbs = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 0, 0], [0.5, 0.5, 0.5]],
                        dtype=torch.float64)
    t_start = torch.tensor([1.0, 1.0, 1.5, 2.0, 2.5, 0.0], dtype=torch.float64)
    t_end = torch.tensor([1.5, 1.5, 2.5, 2.5, 3.0, 1.0], dtype=torch.float64)
    offsets = torch.tensor([0, 1, 3, 5, 5, 6])
    inputs = (sigmas, rgbs, t_start, t_end)
    out = composite_rays(*(t.to(device, dtype) for t in inputs), offsets.to(device),
                         backend=backend)
    # Ray 0: T = 1, alpha = 1 - e^-0.5.
    a0 = 1 - math.exp(-0.5)
    # Ray 1: alpha1 = 1 - e^-1 (sigma 2, delta 0.5); T2 = e^-1; alpha2 = 1 - e^-0.5.
    a1, t2, a2 = 1 - math.exp(-1.0), math.exp(-1.0), 1 - math.exp(-0.5)
    # Ray 2: first sample alpha = 1 - e^-5000 = 1, so T2 = 0 < 1e-4 and the second is skipped.
    # Ray 4: alpha = 1 - e^-0.1.
    a4 = 1 - math.exp(-0.1)
    want_weights = [a0, a1, t2 * a2, 1.0, 0.0, a4]
    want_color = [[a0, 0, 0], [0, a1, t2 * a2], [1, 1, 1], [0, 0, 0], [0.5 * a4] * 3]
    want_depth = [1.25 * a0, 1.25 * a1 + 2.0 * t2 * a2, 2.25, 0.0, 0.5 * a4]
    torch.testing.assert_close(out.weights.cpu(), torch.tensor(want_weights, dtype=dtype))
    torch.testing.assert_close(out.color.cpu(), torch.tensor(want_color, dtype=dtype))
    torch.testing.assert_close(out.depth.cpu(), torch.tensor(want_depth, dtype=dtype))
    want_opacity = [a0, a1 + t2 * a2, 1.0, 0.0, a4]
    torch.testing.assert_close(out.opacity.cpu(), torch.tensor(want_opacity, dtype=dtype))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_background_blends_behind_uncovered_light(backend, device):
    sigmas, rgbs, t0, t1, offsets = packed([3, 0, 5], device=device)
    white = torch.ones(3, dtype=torch.float64, device=device)
    plain = composite_rays(sigmas, rgbs, t0, t1, offsets, backend=backend)
    blended = composite_rays(sigmas, rgbs, t0, t1, offsets, background=white, backend=backend)
    torch.testing.assert_close(blended.color, plain.color + (1 - plain.opacity)[:, None])
    assert torch.equal(blended.color[1], white)  # a ray with no samples shows the background


# --- every backend against the reference ------------------------------------------------------

def run_with_grads(fn, sigmas, rgbs, t0, t1, offsets, seed=3):
    sigmas = sigmas.detach().requires_grad_()
    rgbs = rgbs.detach().requires_grad_()
    out = fn(sigmas, rgbs, t0, t1, offsets)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) * t).sum()
               for t in out)
    return (*out, *torch.autograd.grad(loss, (sigmas, rgbs)))


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_rays", [0, 1, 1023])
def test_matches_reference(backend, device, dtype, n_rays, cpu_path):
    gen = torch.Generator().manual_seed(n_rays)
    counts = torch.randint(0, 70, (n_rays,), generator=gen).tolist()
    inputs = packed(counts, dtype=dtype, device=device, seed=n_rays)
    got = run_with_grads(lambda *a: composite_rays(*a, backend=backend), *inputs)
    want = run_with_grads(lambda *a: ref.composite_rays(*a), *inputs)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    names = ("color", "opacity", "depth", "weights", "grad_sigmas", "grad_rgbs")
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_long_rays_cut_by_the_threshold_match_the_reference(backend, device):
    """Rays of up to 300 samples (the triton kernel's 64-sample steps carry their optical depth
    from step to step), dense enough that many end past the threshold in a later step, empty and
    one-sample rays among them; forward and both gradients, with the weights' gradient too."""
    counts = [0, 1, 64, 65, 129, 300, 0, 7, 191, 128, 2]
    inputs = packed(counts, device=device, seed=11, density=12.0)
    got = run_with_grads(lambda *a: composite_rays(*a, backend=backend), *inputs)
    want = run_with_grads(lambda *a: ref.composite_rays(*a), *inputs)
    assert int((want[3] == 0).sum()) > 50  # the threshold cuts some rays
    names = ("color", "opacity", "depth", "weights", "grad_sigmas", "grad_rgbs")
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10,
                                   msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_gradcheck_fp64(backend, device):
    sigmas, rgbs, t0, t1, offsets = packed([3, 0, 1, 4], device=device, density=1.0)
    sigmas.requires_grad_()
    rgbs.requires_grad_()
    white = torch.ones(3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, c, bg: tuple(composite_rays(s, c, t0, t1, offsets, background=bg,
                                              backend=backend)),
        (sigmas, rgbs, white))


def test_packed_equals_padded():
    counts = [5, 0, 1, 9, 3]
    sigmas, rgbs, t0, t1, offsets = packed(counts, seed=7, density=20.0)
    k = max(counts)
    mask = torch.arange(k)[None, :] < torch.tensor(counts)[:, None]  # [n_rays, K]

    def pad(t):
        out = torch.zeros((len(counts), k) + t.shape[1:], dtype=t.dtype)
        out[mask] = t
        return out

    sig = sigmas.clone().requires_grad_()
    col = rgbs.clone().requires_grad_()
    a = ref.composite_rays(sig, col, t0, t1, offsets)
    sig_p = pad(sigmas).requires_grad_()
    col_p = pad(rgbs).requires_grad_()
    b = ref.composite_rays_padded(sig_p, col_p, pad(t0), pad(t1), mask)
    for x, y in zip(a[:3], b[:3], strict=True):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(a.weights, b.weights[mask])
    (a.color.sum() + a.depth.sum()).backward()
    (b.color.sum() + b.depth.sum()).backward()
    torch.testing.assert_close(sig.grad, sig_p.grad[mask])
    torch.testing.assert_close(col.grad, col_p.grad[mask])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_early_termination_gives_no_gradient_past_it(backend, device, dtype, cpu_path):
    sigmas, rgbs, t0, t1, offsets = packed([40], dtype=dtype, device=device, density=200.0)
    got = run_with_grads(lambda *a: composite_rays(*a, backend=backend), sigmas, rgbs, t0, t1,
                         offsets)
    weights, grad_sigmas = got[3], got[4]
    dead = weights == 0
    assert dead.any(), "the ray should terminate early"
    assert (grad_sigmas[dead] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_output_entry_is_written(backend, device, dtype, cpu_path):
    """The kernels allocate their outputs and gradients unfilled: with torch's deterministic mode
    every unfilled entry starts as NaN, so one a kernel forgets (an empty ray, a sample past the
    threshold) shows."""
    counts = [5, 0, 40, 1, 0, 17]
    inputs = packed(counts, dtype=dtype, device=device, seed=3, density=200.0)  # 40: ends early
    want = run_with_grads(lambda *a: ref.composite_rays(*a), *inputs)
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.empty(4, device=device).isnan().all()  # the fill is on
        got = run_with_grads(lambda *a: composite_rays(*a, backend=backend), *inputs)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    assert (got[3] == 0).any(), "some samples should lie past the threshold"
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


HALF = torch.float16
F32 = torch.float32


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("sigmas_dtype,rgbs_dtype", [(F32, HALF), (HALF, F32), (HALF, HALF)],
                         ids=["half-rgbs", "half-sigmas", "both-half"])
def test_half_densities_and_colours_beside_float_positions(backend, device, sigmas_dtype,
                                                           rgbs_dtype, cpu_path):
    """A mixed-precision field's half outputs go in as they are: the outputs are float32, each
    gradient comes back in its input's type, all within twice the error of the reference on the
    same inputs against float64."""
    counts = torch.randint(0, 70, (257,), generator=torch.Generator().manual_seed(4)).tolist()
    sigmas, rgbs, t0, t1, offsets = packed(counts, dtype=F32, device=device, seed=4, density=8.0)
    sigmas, rgbs = sigmas.to(sigmas_dtype), rgbs.to(rgbs_dtype)
    got = run_with_grads(lambda *a: composite_rays(*a, backend=backend), sigmas, rgbs, t0, t1,
                         offsets)
    lowprec = run_with_grads(lambda *a: ref.composite_rays(*a), sigmas, rgbs, t0, t1, offsets)
    exact = run_with_grads(lambda *a: ref.composite_rays(*a), sigmas.double(), rgbs.double(),
                           t0.double(), t1.double(), offsets)
    assert [t.dtype for t in got] == [F32] * 4 + [sigmas_dtype, rgbs_dtype]
    names = ("color", "opacity", "depth", "weights", "grad_sigmas", "grad_rgbs")
    for name, a, b, c in zip(names, got, lowprec, exact, strict=True):
        try:
            assert_lowprec_close(a, b, c, atol=1e-6 * c.abs().max().item())
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None


@pytest.mark.parametrize("path", ["avx2", "portable"])
def test_cpu_half_inputs_are_the_float_kernel_on_their_exact_widening(path, monkeypatch):
    """The cpu kernel reads half densities and colours as their exact widening to float (the
    portable loops widen them up front, the AVX2 ones on load) and rounds the half gradients
    once from float: bit for bit the float kernel on the widened inputs, its gradients rounded
    to half."""
    monkeypatch.setenv("NERFX_CPU_PATH", path)
    counts = torch.randint(0, 70, (257,), generator=torch.Generator().manual_seed(5)).tolist()
    sigmas, rgbs, t0, t1, offsets = packed(counts, dtype=F32, device="cpu", seed=5, density=8.0)
    sigmas, rgbs = sigmas.half(), rgbs.half()
    run = lambda *a: composite_rays(*a, backend="cpu")  # noqa: E731
    got = run_with_grads(run, sigmas, rgbs, t0, t1, offsets)
    wide = run_with_grads(run, sigmas.float(), rgbs.float(), t0, t1, offsets)
    for a, b in zip(got[:4], wide[:4], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(got[4], wide[4].half()) and torch.equal(got[5], wide[5].half())


@pytest.mark.parametrize("backend,device", [p for p in BACKENDS if "torch" not in p.id])
def test_kernels_name_the_types_they_take(backend, device):
    sigmas, rgbs, t0, t1, offsets = packed([2, 3], device=device)
    with pytest.raises(BackendError, match="t_start/t_end in float32 or float64"):
        composite_rays(sigmas.half(), rgbs.half(), t0.half(), t1.half(), offsets, backend=backend)
    with pytest.raises(BackendError, match="sigmas and rgbs in torch.float64"):
        composite_rays(sigmas.half(), rgbs, t0, t1, offsets, backend=backend)  # float64 t
    with pytest.raises(BackendError, match="not .'torch.bfloat16'"):
        composite_rays(sigmas.bfloat16(), rgbs.float(), t0.float(), t1.float(), offsets,
                       backend=backend)
    if backend in ("cpu", "cuda"):  # the compiled op refuses them too (direct torch.ops callers)
        with pytest.raises(RuntimeError, match="sigmas must be torch.float64 for torch.float64 "
                                               "t_start, got torch.float16"):
            torch.ops.nerfx.composite_rays(sigmas.half(), rgbs, t0, t1, offsets, 1e-4)
        with pytest.raises(RuntimeError, match="t_start must be torch.float32 or torch.float64, "
                                               "got torch.float16"):
            torch.ops.nerfx.composite_rays(sigmas.half(), rgbs.half(), t0.half(), t1.half(),
                                           offsets, 1e-4)
    # Every half input keeps auto working: it falls back to the reference.
    out = composite_rays(sigmas.half(), rgbs.half(), t0.half(), t1.half(), offsets)
    assert out.color.dtype == torch.float16


def test_bad_input_is_named():
    sigmas, rgbs, t0, t1, offsets = packed([2, 3])
    with pytest.raises(ValueError, match="rgbs must be"):
        composite_rays(sigmas, rgbs[:, :2], t0, t1, offsets)
    with pytest.raises(TypeError, match="offsets must be torch.int64, got torch.int32"):
        composite_rays(sigmas, rgbs, t0, t1, offsets.int())
    with pytest.raises(ValueError, match="offsets must rise"):
        composite_rays(sigmas, rgbs, t0, t1, torch.tensor([0, 4, 3]))
    with pytest.raises(TypeError, match="t_end must be torch.float64 like t_start, "
                                        "got torch.float32"):
        composite_rays(sigmas, rgbs, t0, t1.float(), offsets)
    with pytest.raises(BackendError, match="'cuda' cannot serve"):
        composite_rays(sigmas, rgbs, t0, t1, offsets, backend="cuda")


def test_no_rays_with_samples_is_refused_on_every_device():
    """The op checks this from sizes alone, so also for CUDA tensors (no synchronisation)."""
    sigmas, rgbs, t0, t1, good = packed([3])
    composite_rays(sigmas, rgbs, t0, t1, good, backend="cpu")  # loads nerfx._C
    with pytest.raises(RuntimeError, match="no rays. need S = 0, got S = 3"):
        torch.ops.nerfx.composite_rays(sigmas, rgbs, t0, t1, torch.zeros(1, dtype=torch.int64),
                                       1e-4)


# S = 5 samples in two rays: falling, past S, not from 0, short of S, negative.
BAD_OFFSETS = [[0, 4, 3], [0, 3, 6], [1, 2, 5], [0, 2, 4], [0, -1, 5]]


@pytest.mark.parametrize("offsets", BAD_OFFSETS, ids=str)
def test_bad_offsets_are_refused_by_the_kernel_too(offsets):
    """The op itself checks the offsets (the Python check is skipped in compiled graphs and by
    direct torch.ops callers), before any sample is read or written."""
    sigmas, rgbs, t0, t1, good = packed([2, 3])
    composite_rays(sigmas, rgbs, t0, t1, good, backend="cpu")  # loads nerfx._C
    bad = torch.tensor(offsets)
    with pytest.raises(RuntimeError, match="offsets must rise from 0 to S = 5"):
        torch.ops.nerfx.composite_rays(sigmas, rgbs, t0, t1, bad, 1e-4)
    saved = torch.ops.nerfx.composite_rays(sigmas, rgbs, t0, t1, good, 1e-4)
    grads = [torch.ones_like(saved[0]), torch.ones_like(saved[1]), torch.ones_like(saved[2]),
             sigmas.new_empty(0)]
    with pytest.raises(RuntimeError, match="offsets must rise from 0 to S = 5"):
        torch.ops.nerfx.composite_rays_backward(*grads, sigmas, rgbs, t0, t1, bad, *saved, 1e-4)
    torch._dynamo.reset()
    compiled = torch.compile(lambda *a: composite_rays(*a, backend="cpu").color, fullgraph=True)
    with pytest.raises(RuntimeError, match="offsets must rise"):
        compiled(sigmas, rgbs, t0, t1, bad)


@pytest.mark.parametrize("name,index,shape", [
    ("grad_color", 0, (1, 3)), ("grad_opacity", 1, (3,)), ("grad_depth", 2, (2, 1)),
    ("grad_weights", 3, (4,)), ("color", 4, (2, 4)), ("weights", 7, (6,))])
def test_backward_checks_gradient_shapes(name, index, shape):
    sigmas, rgbs, t0, t1, offsets = packed([2, 3])
    saved = list(composite_rays(sigmas, rgbs, t0, t1, offsets, backend="cpu"))
    args = [torch.ones_like(saved[0]), torch.ones_like(saved[1]), torch.ones_like(saved[2]),
            torch.ones_like(saved[3]), *saved]  # grads of color, opacity, depth, weights; saved
    args[index] = sigmas.new_ones(shape)
    grads, outs = args[:4], args[4:]
    with pytest.raises(RuntimeError, match=f"backward: {name} must be"):
        torch.ops.nerfx.composite_rays_backward(*grads, sigmas, rgbs, t0, t1, offsets, *outs,
                                                1e-4)


@requires_cuda
def test_bad_offsets_on_cuda_assert_on_the_device():
    """On CUDA the kernel's own check fires a device-side assert (it poisons the CUDA context,
    so it runs in a child process) instead of writing outside the buffers."""
    code = ("import torch; from nerfx.ops import composite_rays; "
            "s = torch.rand(5, device='cuda', dtype=torch.float64); "
            "c = composite_rays(s, torch.rand(5, 3, device='cuda', dtype=torch.float64), "
            "torch.zeros_like(s), torch.ones_like(s), torch.tensor([0, 3, 9], device='cuda'), "
            "backend='cuda'); torch.cuda.synchronize()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "offsets must rise" in output or "device-side assert" in output, output


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    inputs = packed([4, 0, 7], dtype=torch.float32)
    fn = torch.compile(lambda *a: composite_rays(*a, backend="cpu").color, fullgraph=True)
    torch.testing.assert_close(fn(*inputs), composite_rays(*inputs, backend="cpu").color)


def test_reference_prefix_sums_keep_float64_precision_over_many_rays():
    """The reference's per-ray optical depths come from one cumsum over the packed array; a
    plain cumsum minus the sum before each ray loses ~1e-9 when the array's total reaches
    millions (the at-scale fp64 comparison on an H200 failed on it). Each ray's sums must stay
    within float64 rounding of the exact ones, empty rays included."""
    gen = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 129, (2**14,), generator=gen)
    counts[::7] = 0
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    values = torch.rand(int(offsets[-1]), generator=gen, dtype=torch.float64) * 20
    got = ref.per_ray_exclusive_sums(values, offsets, ref.ray_indices(offsets, values.numel()))
    worst = 0.0
    for r in range(0, counts.numel(), 97):
        start, stop = int(offsets[r]), int(offsets[r + 1])
        ray = values[start:stop].tolist()
        exact = [math.fsum(ray[:i]) for i in range(len(ray))]
        errors = [abs(a - b) for a, b in zip(got[start:stop].tolist(), exact, strict=True)]
        worst = max([worst, *errors])
    assert worst < 1e-11  # a plain cumsum's difference is off by ~1e-8 at this total (8.9e6)
