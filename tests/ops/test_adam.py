"""Adam skipping zero-gradient entries: every backend against the reference, untouched entries
bit for bit, torch.optim.Adam's arithmetic for touched ones, per-entry bias correction by hand,
and the optimiser (groups, lr, state_dict, old torch Adam checkpoints, GradScaler, make_optimizer).
"""

from __future__ import annotations

import io
import math

import pytest
import torch

from nerfx.ops import BackendError, SkipZeroAdam, adam_step
from nerfx.ops.adam import BACKENDS, state_dtype
from nerfx.ref import adam as ref
from tests.helpers import BACKEND_DEVICES, requires_cuda

# adam_step has no triton backend: drop those pairs.
PAIRS = [p for p in BACKEND_DEVICES if "triton" not in p.id]
# Instant-NGP's settings (Müller et al. 2022, sec. 4; DESIGN.md): Adam (0.9, 0.99), eps 1e-15.
NGP = dict(lr=1e-2, beta1=0.9, beta2=0.99, eps=1e-15)
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16}


def table(n: int, dtype: torch.dtype, device: str, seed: int = 0, started: bool = True):
    """(param, exp_avg, exp_avg_sq, step) of n entries; started: mid-training state (random
    moments and counts) rather than fresh zeros."""
    gen = torch.Generator().manual_seed(seed)
    moments = state_dtype(dtype)
    param = torch.randn(n, generator=gen, dtype=torch.float64).to(dtype)
    if not started:
        zeros = torch.zeros(n, dtype=moments)
        return (param.to(device), zeros.to(device), zeros.clone().to(device),
                torch.zeros(n, dtype=torch.int32, device=device))
    exp_avg = (torch.randn(n, generator=gen, dtype=torch.float64) * 0.1).to(moments)
    exp_avg_sq = (torch.rand(n, generator=gen, dtype=torch.float64) * 0.01).to(moments)
    step = torch.randint(0, 50, (n,), generator=gen, dtype=torch.int32)
    # Some counts where the bias corrections reach 1 in float (t = 1724 for beta2 = 0.99: the
    # cpu kernel's table ends there) and far beyond it.
    late = torch.randint(0, 8, (n,), generator=gen)
    step[late == 0] = torch.randint(1715, 1735, (n,), generator=gen, dtype=torch.int32)[late == 0]
    step[late == 1] = 1_000_000
    return tuple(t.to(device) for t in (param, exp_avg, exp_avg_sq, step))


def gradient(n: int, dtype: torch.dtype, device: str, seed: int, zero_fraction: float = 0.5,
             always: torch.Tensor | None = None) -> torch.Tensor:
    """[n] random gradient with about zero_fraction of its entries exactly 0 (half of them -0.0);
    entries where `always` is True are never 0."""
    gen = torch.Generator().manual_seed(1000 + seed)
    grad = torch.randn(n, generator=gen, dtype=torch.float64)
    grad = grad + grad.sign() * 0.05  # no accidental tiny values
    zero = torch.rand(n, generator=gen) < zero_fraction
    if always is not None:
        zero &= ~always.cpu()
    negative = torch.rand(n, generator=gen) < 0.5
    grad[zero] = 0.0
    grad[zero & negative] = -0.0
    return grad.to(dtype).to(device)


def clone_all(tensors):
    return tuple(t.clone() for t in tensors)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.dtype]) if t.is_floating_point() else t


def select(backend: str, device: str, dtype: torch.dtype) -> None:
    try:
        BACKENDS.select(backend, torch.device(device), (dtype,))
    except BackendError as exc:
        pytest.skip(str(exc))


# --- every backend against the reference -------------------------------------------------------

@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 197, 1025, 40961])  # 40961: several chunks of the cpu loop
def test_backend_equals_reference(backend, device, dtype, n):
    select(backend, device, dtype)
    state = table(n, dtype, device)
    want = clone_all(state)
    for k in range(4):
        grad = gradient(n, dtype, device, seed=k, zero_fraction=0.3)
        adam_step(*state[:1], grad, *state[1:], **NGP, backend=backend)
        ref.adam_step(want[0], grad, *want[1:], **NGP)
    param, exp_avg, exp_avg_sq, step = state
    assert torch.equal(step, want[3])
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(exp_avg, want[1], **tol)
    torch.testing.assert_close(exp_avg_sq, want[2], **tol)
    torch.testing.assert_close(param, want[0], **tol)


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_zero_gradient_entries_stay_bit_identical(backend, device, dtype):
    """Entries whose gradient is 0 or -0.0 keep parameter, moments and count bit for bit; all
    others move."""
    select(backend, device, dtype)
    n = 1025
    state = table(n, dtype, device, seed=3)
    before = clone_all(state)
    grad = gradient(n, dtype, device, seed=7, zero_fraction=0.6)
    zero = grad == 0
    assert zero.any() and (~zero).any() and (torch.signbit(grad) & zero).any()
    adam_step(state[0], grad, *state[1:], **NGP, backend=backend)
    for now, then in zip(state, before, strict=True):
        assert torch.equal(bits(now)[zero], bits(then)[zero])
    assert torch.equal(state[3][~zero], before[3][~zero] + 1)
    assert (state[1] != before[1])[~zero].all()


@pytest.mark.parametrize("backend,device", PAIRS)
def test_half_table_matches_the_reference_and_float64(backend, device):
    """An fp16 table (HashGridEncoding(dtype=torch.float16)) keeps float32 moments; its values
    round once per step, so they lie within about half an fp16 ulp of a float64 run."""
    select(backend, device, torch.float16)
    n = 1025
    half = table(n, torch.float16, device, seed=5, started=False)
    wide = tuple(t.double() if t.is_floating_point() else t.clone() for t in half)
    want = clone_all(half)
    largest = wide[0].abs()  # [n] the largest magnitude along the float64 run
    for k in range(3):
        grad = gradient(n, torch.float16, device, seed=20 + k, zero_fraction=0.3)
        adam_step(half[0], grad, *half[1:], **NGP, backend=backend)
        ref.adam_step(want[0], grad, *want[1:], **NGP)
        ref.adam_step(wide[0], grad.double(), *wide[1:], **NGP)
        largest = torch.maximum(largest, wide[0].abs())
    assert half[1].dtype == half[2].dtype == torch.float32
    assert torch.equal(half[3], want[3])
    torch.testing.assert_close(half[1], want[1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(half[0], want[0], rtol=2**-10, atol=2**-24)  # one fp16 ulp
    # Each of the 3 steps rounds to fp16 once: at most 3 half-ulps (2^-11 relative) apart.
    err = (half[0].double() - wide[0]).abs()
    assert (err <= largest * 3 * 2**-11 + 3 * 2**-25).all(), err.max()


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_hash_table_rows_touched_in_runs_and_in_single_lanes(backend, device, dtype):
    """A table of F=2 rows as training touches it: runs of untouched rows longer than any SIMD
    batch (the cpu kernel skips those batches), rows with one lane 0 (or -0.0) and the other not,
    batches touched in their last lane only. Untouched entries keep their bits; the rest equal
    the reference."""
    select(backend, device, dtype)
    n_rows = 517
    gen = torch.Generator().manual_seed(11)
    rows = torch.randn(n_rows, 2, generator=gen, dtype=torch.float64)
    rows = rows + rows.sign() * 0.05
    rows[40:80] = 0.0                  # 80 zero entries in a run, -0.0 in half of it
    rows[60:80] = -0.0
    rows[100:200:3, 0] = 0.0           # one lane of a row only
    rows[101:200:3, 1] = -0.0
    rows[240:256] = 0.0                # a run ending in a row touched in its last lane only
    rows[256, 0] = 0.0
    rows[300:] *= (torch.rand(n_rows - 300, 1, generator=gen) < 0.25)  # 25% of rows touched
    grad = rows.reshape(-1).to(dtype).to(device)
    n = grad.numel()
    state = table(n, dtype, device, seed=12)
    before, want = clone_all(state), clone_all(state)
    adam_step(state[0], grad, *state[1:], **NGP, backend=backend)
    ref.adam_step(want[0], grad, *want[1:], **NGP)
    zero = grad == 0
    for now, then in zip(state, before, strict=True):
        assert torch.equal(bits(now)[zero], bits(then)[zero])
    assert torch.equal(state[3], want[3])
    if dtype == torch.float16:
        tol = dict(rtol=2**-10, atol=2**-24)
    else:
        tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12,
                                                                             atol=1e-15)
    for got, ref_value in zip(state[:3], want[:3], strict=True):
        torch.testing.assert_close(got, ref_value, **tol)


def test_cpu_result_does_not_depend_on_an_entrys_position():
    """The cpu kernel steps SIMD batches and lone tail entries: the same bits either way."""
    select("cpu", "cpu", torch.float32)
    n = 1030
    state = table(n, torch.float32, "cpu", seed=9)
    grad = gradient(n, torch.float32, "cpu", seed=9)
    shifted = [torch.cat([t[:1], t]) for t in (*state, grad)]  # every entry one lane later
    adam_step(*state[:1], grad, *state[1:], **NGP, backend="cpu")
    param, exp_avg, exp_avg_sq, step, g = shifted
    adam_step(param, g, exp_avg, exp_avg_sq, step, **NGP, backend="cpu")
    for got, want in zip((param, exp_avg, exp_avg_sq, step), state, strict=True):
        assert torch.equal(bits(got[1:]), bits(want))


# --- the arithmetic: torch.optim.Adam for touched entries, each entry's own count ------------

@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_always_touched_entries_follow_torch_adam(backend, device, dtype):
    """Adam is per entry: where the gradient is never 0 the op must give torch.optim.Adam's
    parameters and moments step by step, whatever the other entries do."""
    select(backend, device, dtype)
    n = 197
    param, exp_avg, exp_avg_sq, step = table(n, dtype, device, started=False)
    always = torch.arange(n, device=device) % 3 == 0
    theirs = torch.nn.Parameter(param.clone())
    adam = torch.optim.Adam([theirs], lr=NGP["lr"], betas=(NGP["beta1"], NGP["beta2"]),
                            eps=NGP["eps"], foreach=False)
    tol = dict(rtol=1e-5, atol=1e-7) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-15)
    for k in range(6):
        grad = gradient(n, dtype, device, seed=40 + k, zero_fraction=0.5, always=always)
        adam_step(param, grad, exp_avg, exp_avg_sq, step, **NGP, backend=backend)
        theirs.grad = grad.clone()
        adam.step()
        state = adam.state[theirs]
        assert (step[always] == k + 1).all()
        torch.testing.assert_close(exp_avg[always], state["exp_avg"][always], **tol)
        torch.testing.assert_close(exp_avg_sq[always], state["exp_avg_sq"][always], **tol)
        torch.testing.assert_close(param[always], theirs.detach()[always], **tol)
    # The other entries took fewer steps, so torch's dense Adam moved them elsewhere.
    assert (step[~always] < 6).any()
    assert not torch.allclose(param[~always], theirs.detach()[~always])


def hand_adam(grads: list[float], p: float, lr: float, beta1: float, beta2: float,
              eps: float, shared_count: bool = False) -> tuple[float, float, float, int]:
    """Adam in Python floats, skipping the steps whose gradient is 0; the bias corrections count
    the entry's own steps, or with shared_count every step of the run (a table-wide count)."""
    m = v = 0.0
    t = 0
    for i, g in enumerate(grads):
        if g == 0:
            continue
        t = i + 1 if shared_count else t + 1
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        p -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return p, m, v, t


@pytest.mark.parametrize("backend,device", PAIRS)
def test_bias_correction_uses_each_entrys_own_count(backend, device):
    """Three entries over four steps: touched every step, at steps 1 and 4 only, never. The
    second entry's step 4 is its 2nd: bias corrections 1 - 0.9^2 and 1 - 0.99^2, not ^4."""
    select(backend, device, torch.float64)
    grads = [[0.3, -0.2, 0.0], [0.5, 0.0, 0.0], [-0.1, 0.0, 0.0], [0.2, 0.4, 0.0]]
    param = torch.tensor([0.1, -0.7, 0.05], dtype=torch.float64, device=device)
    exp_avg, exp_avg_sq = torch.zeros_like(param), torch.zeros_like(param)
    step = torch.zeros(3, dtype=torch.int32, device=device)
    for g in grads:
        adam_step(param, torch.tensor(g, dtype=torch.float64, device=device), exp_avg,
                  exp_avg_sq, step, **NGP, backend=backend)
    for i, p0 in enumerate((0.1, -0.7, 0.05)):
        p, m, v, t = hand_adam([g[i] for g in grads], p0, **NGP)
        assert int(step[i]) == t
        assert param[i].item() == pytest.approx(p, rel=1e-13, abs=1e-15)
        assert exp_avg[i].item() == pytest.approx(m, rel=1e-13, abs=1e-15)
        assert exp_avg_sq[i].item() == pytest.approx(v, rel=1e-13, abs=1e-15)
    # A count shared by the table (t = 4 at the last step) gives another value: the test can fail.
    shared = hand_adam([g[1] for g in grads], -0.7, **NGP, shared_count=True)[0]
    assert abs(param[1].item() - shared) > 5e-4


# --- checks -------------------------------------------------------------------------------------

def test_bad_arguments_are_named():
    param, exp_avg, exp_avg_sq, step = table(8, torch.float32, "cpu")
    grad = torch.ones(8)
    with pytest.raises(TypeError, match="step must be torch.int32, got torch.float32"):
        adam_step(param, grad, exp_avg, exp_avg_sq, step.float(), **NGP)
    with pytest.raises(TypeError, match="exp_avg must be torch.float32"):
        adam_step(param, grad, exp_avg.double(), exp_avg_sq, step, **NGP)
    with pytest.raises(ValueError, match=r"grad must have param's shape \[8\], got \[9\]"):
        adam_step(param, torch.ones(9), exp_avg, exp_avg_sq, step, **NGP)
    with pytest.raises(ValueError, match="contiguous"):
        strided = torch.zeros(16)[::2]
        adam_step(strided, grad, exp_avg, exp_avg_sq, step, **NGP)
    with pytest.raises(ValueError, match="betas in"):
        adam_step(param, grad, exp_avg, exp_avg_sq, step, **(NGP | dict(beta2=1.0)))


@pytest.mark.parametrize("backend,device", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_loss_scale_is_divided_out_and_overflow_skips(backend, device, dtype):
    """A gradient times a power-of-two loss scale, with grad_scale, steps exactly as the
    unscaled gradient; found_inf nonzero leaves everything as it was, zero changes nothing."""
    select(backend, device, dtype)
    n = 1025
    plain = table(n, dtype, device, seed=11)
    scaled, skipped, flag_zero = clone_all(plain), clone_all(plain), clone_all(plain)
    grad = gradient(n, dtype, device, seed=12, zero_fraction=0.4)
    scale = torch.tensor([2.0**4], device=device)
    adam_step(plain[0], grad, *plain[1:], **NGP, backend=backend)
    adam_step(scaled[0], grad * 2**4, *scaled[1:], **NGP, grad_scale=scale, backend=backend)
    one, zero = torch.ones(1, device=device), torch.zeros(1, device=device)
    adam_step(skipped[0], grad, *skipped[1:], **NGP, found_inf=one, backend=backend)
    adam_step(flag_zero[0], grad, *flag_zero[1:], **NGP, found_inf=zero, backend=backend)
    before = table(n, dtype, device, seed=11)
    assert not torch.equal(plain[0], before[0])  # the step moved the table
    for got, same, want in zip(scaled, flag_zero, plain, strict=True):
        assert torch.equal(bits(got), bits(want))
        assert torch.equal(bits(same), bits(want))
    for now, then in zip(skipped, before, strict=True):
        assert torch.equal(bits(now), bits(then))


def test_bad_scaler_tensors_are_named():
    param, exp_avg, exp_avg_sq, step = table(8, torch.float32, "cpu")
    with pytest.raises(TypeError, match="grad_scale must be a torch.float32 tensor of one element"):
        adam_step(param, torch.ones(8), exp_avg, exp_avg_sq, step, **NGP,
                  grad_scale=torch.ones(2))
    with pytest.raises(TypeError, match="found_inf must be a torch.float32"):
        adam_step(param, torch.ones(8), exp_avg, exp_avg_sq, step, **NGP,
                  found_inf=torch.ones(1, dtype=torch.float64))
    select("cpu", "cpu", torch.float32)
    with pytest.raises(RuntimeError,
                       match="grad_scale must be a torch.float32 tensor of one element"):
        torch.ops.nerfx.adam_step(param, torch.ones(8), exp_avg, exp_avg_sq, step,
                                  1e-2, 0.9, 0.99, 1e-15, torch.ones(3), None)


def test_the_kernel_checks_its_arguments_itself():
    """The compiled op refuses what the Python checks refuse, for callers of torch.ops."""
    select("cpu", "cpu", torch.float32)
    param, exp_avg, exp_avg_sq, step = table(8, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="step must be torch.int32, got torch.int64"):
        torch.ops.nerfx.adam_step(param, torch.ones(8), exp_avg, exp_avg_sq, step.long(),
                                  1e-2, 0.9, 0.99, 1e-15)
    with pytest.raises(RuntimeError, match="must have param's shape"):
        torch.ops.nerfx.adam_step(param, torch.ones(7), exp_avg, exp_avg_sq, step,
                                  1e-2, 0.9, 0.99, 1e-15)


def test_torch_compile_fullgraph():
    select("cpu", "cpu", torch.float32)
    state = table(197, torch.float32, "cpu")
    want = clone_all(state)
    grad = gradient(197, torch.float32, "cpu", seed=1)

    def step_once(p, g, m, v, t):
        adam_step(p, g, m, v, t, **NGP, backend="cpu")

    torch.compile(step_once, fullgraph=True, backend="aot_eager")(state[0], grad, *state[1:])
    adam_step(want[0], grad, *want[1:], **NGP, backend="cpu")
    for got, expected in zip(state, want, strict=True):
        assert torch.equal(got, expected)


# --- the optimiser ------------------------------------------------------------------------------

def two_groups(dtype=torch.float32, device="cpu", seed=0):
    """A table (skip_zero) and a small 'MLP' weight, as leaf parameters."""
    gen = torch.Generator().manual_seed(seed)
    tab = torch.nn.Parameter((torch.randn(1025, generator=gen) * 1e-2).to(dtype).to(device))
    mlp = torch.nn.Parameter(torch.randn(16, 8, generator=gen).to(device))
    return tab, mlp


def optimiser(tab, mlp, **kw) -> SkipZeroAdam:
    return SkipZeroAdam([{"params": [tab], "skip_zero": True}, {"params": [mlp]}], lr=1e-2,
                        betas=(0.9, 0.99), eps=1e-15, **kw)


def set_grads(tab, mlp, k: int) -> None:
    tab.grad = gradient(tab.numel(), tab.dtype, tab.device.type, seed=k, zero_fraction=0.9)
    mlp_grad = gradient(mlp.numel(), torch.float32, mlp.device.type, seed=500 + k,
                        zero_fraction=0.3)
    mlp.grad = mlp_grad.view_as(mlp)


def test_optimizer_skips_the_table_and_steps_the_rest_as_torch_adam():
    tab, mlp = two_groups()
    opt = optimiser(tab, mlp)
    tab_ref = tab.detach().clone()
    state = (tab_ref, torch.zeros(1025), torch.zeros(1025), torch.zeros(1025, dtype=torch.int32))
    mlp_ref = torch.nn.Parameter(mlp.detach().clone())
    adam = torch.optim.Adam([mlp_ref], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for k in range(3):
        set_grads(tab, mlp, k)
        untouched = tab.detach().clone()
        opt.step()
        zero = tab.grad == 0
        assert torch.equal(tab.detach()[zero], untouched[zero])
        ref.adam_step(state[0], tab.grad, *state[1:], **NGP)
        mlp_ref.grad = mlp.grad.clone()
        adam.step()
    torch.testing.assert_close(tab.detach(), state[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(opt.state[tab]["step"], state[3])
    # The MLP group is torch's Adam: zero-gradient entries move by their momentum there.
    torch.testing.assert_close(mlp.detach(), mlp_ref.detach(), rtol=0, atol=0)
    assert opt.state[mlp]["step"].dim() == 0 and float(opt.state[mlp]["step"]) == 3


def test_learning_rate_set_through_param_groups_is_used():
    """The training loop sets group["lr"] before each step (the schedule)."""
    tab, mlp = two_groups()
    opt = optimiser(tab, mlp)
    set_grads(tab, mlp, 0)
    start = tab.detach().clone()
    for group in opt.param_groups:
        group["lr"] = 0.0
    opt.step()
    assert torch.equal(tab.detach(), start)
    assert opt.state[tab]["step"].sum() > 0  # the moments and counts still advanced
    state = (tab.detach().clone(), *(opt.state[tab][k].clone()
                                     for k in ("exp_avg", "exp_avg_sq", "step")))
    for group in opt.param_groups:
        group["lr"] = 3e-3
    opt.step()
    ref.adam_step(state[0], tab.grad, *state[1:], **(NGP | dict(lr=3e-3)))
    torch.testing.assert_close(tab.detach(), state[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_state_dict_round_trips_through_weights_only_load(dtype):
    tab, mlp = two_groups(dtype)
    opt = optimiser(tab, mlp)
    for k in range(2):
        set_grads(tab, mlp, k)
        opt.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "tab": tab.detach(), "mlp": mlp.detach()},
               buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    tab2 = torch.nn.Parameter(saved["tab"].clone())
    mlp2 = torch.nn.Parameter(saved["mlp"].clone())
    opt2 = optimiser(tab2, mlp2)
    opt2.load_state_dict(saved["optimizer"])
    loaded = opt2.state[tab2]
    assert loaded["step"].dtype == torch.int32 and loaded["step"].shape == tab2.shape
    assert loaded["exp_avg"].dtype == loaded["exp_avg_sq"].dtype == torch.float32
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(loaded[key], opt.state[tab][key])
    assert opt2.param_groups[0]["skip_zero"] and not opt2.param_groups[1]["skip_zero"]
    for k in range(2, 4):
        set_grads(tab, mlp, k)
        set_grads(tab2, mlp2, k)
        opt.step()
        opt2.step()
    assert torch.equal(tab.detach(), tab2.detach()) and torch.equal(mlp.detach(), mlp2.detach())


def test_a_torch_adam_checkpoint_loads_converted():
    """Runs before SkipZeroAdam saved torch.optim.Adam's state (one group, one count per
    tensor): every table entry starts from that count, and with all entries touched the next
    steps are torch Adam's."""
    tab, mlp = two_groups()
    adam = torch.optim.Adam([tab, mlp], lr=1e-2, betas=(0.9, 0.99), eps=1e-15)
    for k in range(3):
        set_grads(tab, mlp, k)
        adam.step()
    buffer = io.BytesIO()
    torch.save(adam.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    tab2 = torch.nn.Parameter(tab.detach().clone())
    mlp2 = torch.nn.Parameter(mlp.detach().clone())
    opt = optimiser(tab2, mlp2)
    opt.load_state_dict(saved)
    assert opt.state[tab2]["step"].dtype == torch.int32
    assert (opt.state[tab2]["step"] == 3).all()
    assert torch.equal(opt.state[tab2]["exp_avg"], adam.state[tab]["exp_avg"])
    full = torch.ones_like(tab)  # every entry touched: the same step as torch's
    tab.grad, tab2.grad = full.clone(), full.clone()
    mlp.grad = mlp2.grad = torch.ones_like(mlp)
    adam.step()
    opt.step()
    torch.testing.assert_close(tab2.detach(), tab.detach(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(mlp2.detach(), mlp.detach(), rtol=0, atol=0)


def test_a_checkpoint_of_another_model_is_refused_clearly():
    tab, mlp = two_groups()
    other = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([other], lr=1e-2)
    other.grad = torch.ones(3)
    adam.step()
    with pytest.raises(ValueError, match="holds 1 parameters, this one 2"):
        optimiser(tab, mlp).load_state_dict(adam.state_dict())
    swapped = torch.optim.Adam([mlp, tab], lr=1e-2)
    set_grads(tab, mlp, 0)
    swapped.step()
    with pytest.raises(ValueError, match="belongs to another model"):
        optimiser(tab, mlp).load_state_dict(swapped.state_dict())


def loss_with_grads(tab, mlp, k: int, inf_at: int | None = None) -> torch.Tensor:
    """A loss whose gradients are set_grads(tab, mlp, k)'s (optionally inf at one entry)."""
    g_tab = gradient(tab.numel(), tab.dtype, tab.device.type, seed=k, zero_fraction=0.9)
    g_mlp = gradient(mlp.numel(), torch.float32, mlp.device.type, seed=500 + k,
                     zero_fraction=0.3)
    if inf_at is not None:
        g_tab[inf_at] = math.inf
    return (tab * g_tab).sum() + (mlp * g_mlp.view_as(mlp)).sum()


@pytest.mark.parametrize("fused", [None, True], ids=["unscaled-first", "in-kernel"])
def test_grad_scaler_unscales_and_skips_on_inf(fused):
    """torch.amp.GradScaler.step with this optimiser equals unscaled training (a power-of-two
    scale: exactly, zeros stay zero) and skips the step when a gradient is inf. With every dense
    group fused the scaler hands its scale and flag to the step (no host sync) and leaves the
    gradients scaled; otherwise it unscales them first."""
    tab, mlp = two_groups()
    tab2, mlp2 = (torch.nn.Parameter(p.detach().clone()) for p in (tab, mlp))
    opt, opt2 = optimiser(tab, mlp, fused=fused), optimiser(tab2, mlp2, fused=fused)
    assert opt2._step_supports_amp_scaling == bool(fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1000)
    for k in range(3):
        opt.zero_grad()
        opt2.zero_grad()
        loss_with_grads(tab, mlp, k).backward()
        opt.step()
        scaler.scale(loss_with_grads(tab2, mlp2, k)).backward()
        scaler.step(opt2)
        scaler.update()
        scale_left = 2.0**12 if fused else 1.0  # what the gradients still carry
        assert torch.equal(tab2.grad, tab.grad * scale_left)
    assert scaler.get_scale() == 2.0**12
    assert torch.equal(tab.detach(), tab2.detach()) and torch.equal(mlp.detach(), mlp2.detach())
    before = {k: v.clone() for k, v in opt2.state[tab2].items()}
    opt2.zero_grad()
    scaler.scale(loss_with_grads(tab2, mlp2, 5, inf_at=3)).backward()
    scaler.step(opt2)
    scaler.update()
    assert torch.equal(tab2.detach(), tab.detach()) and torch.equal(mlp2.detach(), mlp.detach())
    assert all(torch.equal(opt2.state[tab2][k], v) for k, v in before.items())
    assert scaler.get_scale() < 2.0**12


def test_weight_decay_is_refused_in_a_skip_zero_group():
    tab, mlp = two_groups()
    with pytest.raises(ValueError, match="no weight_decay"):
        SkipZeroAdam([{"params": [tab], "skip_zero": True, "weight_decay": 1e-6}])
    SkipZeroAdam([{"params": [tab], "skip_zero": True}, {"params": [mlp],
                                                         "weight_decay": 1e-6}])


# --- wired into the Instant-NGP pipeline ---------------------------------------------------------

def small_pipeline(name: str):
    from nerfx.models.pipelines import build_pipeline

    torch.manual_seed(0)
    extra = dict(log2_hashmap_size=12, grid_resolution=16) if name == "ngp" else {}
    return build_pipeline({"name": name, "aabb": [-1.0] * 3 + [1.0] * 3, **extra})


def test_make_optimizer_skips_zeros_in_the_ngp_hash_table_only():
    from nerfx.trainers.radiance import make_optimizer

    ngp = small_pipeline("ngp")
    opt = make_optimizer(ngp)
    assert isinstance(opt, SkipZeroAdam)
    table_group, *rest = opt.param_groups
    assert table_group["skip_zero"] and len(table_group["params"]) == 1
    assert table_group["params"][0] is ngp.field.encoding.params
    assert not any(g["skip_zero"] for g in rest)
    assert sum(len(g["params"]) for g in rest) == len(list(ngp.parameters())) - 1
    assert table_group["betas"] == (0.9, 0.99) and table_group["eps"] == 1e-15
    nerf = small_pipeline("nerf")
    assert type(make_optimizer(nerf)) is torch.optim.Adam


def test_an_ngp_run_saved_with_torch_adam_resumes():
    """What --resume of a run from before SkipZeroAdam (and before parameter groups) does: the
    trainer's load_state_dict; every parameter keeps its own moments."""
    from nerfx.run_format import upgrade_checkpoint
    from nerfx.trainers.radiance import make_optimizer

    ngp = small_pipeline("ngp")
    old = torch.optim.Adam(ngp.parameters(), lr=ngp.lr, betas=ngp.betas, eps=ngp.eps,
                           fused=True)
    for p in ngp.parameters():
        p.grad = torch.randn_like(p)
    old.step()
    buffer = io.BytesIO()
    torch.save(old.state_dict(), buffer)
    buffer.seek(0)
    opt = make_optimizer(ngp)
    payload = {"step": 1, "elapsed": 0.5, "pipeline": ngp.state_dict(),   # format 1
               "optimizer": torch.load(buffer, weights_only=True)}
    opt.load_state_dict(upgrade_checkpoint(payload, {"model": "ngp"})["task"]["optimizer"])
    table = ngp.field.encoding.params
    assert (opt.state[table]["step"] == 1).all()
    assert torch.equal(opt.state[table]["exp_avg_sq"], old.state[table]["exp_avg_sq"])
    for p in ngp.parameters():  # the MLPs' weights and biases, now in other groups
        assert torch.equal(opt.state[p]["exp_avg"].reshape(p.shape), old.state[p]["exp_avg"])
    opt.step()


# --- CUDA --------------------------------------------------------------------------------------

@requires_cuda
@pytest.mark.cuda
def test_optimizer_on_cuda_equals_cpu():
    """The optimiser on CUDA (adam_step's cuda backend, fused torch Adam for the rest) takes the
    CPU's steps."""
    results = []
    for device in ("cpu", "cuda"):
        tab, mlp = two_groups(device=device)
        opt = optimiser(tab, mlp, fused=True)
        for k in range(3):
            set_grads(tab, mlp, k)
            opt.step()
        assert opt.state[tab]["step"].device.type == device
        results.append((tab.detach().cpu(), mlp.detach().cpu(), opt.state[tab]["step"].cpu()))
    (tab_cpu, mlp_cpu, step_cpu), (tab_gpu, mlp_gpu, step_gpu) = results
    assert torch.equal(step_cpu, step_gpu)
    torch.testing.assert_close(tab_gpu, tab_cpu, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(mlp_gpu, mlp_cpu, rtol=1e-5, atol=1e-6)
