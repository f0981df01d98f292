"""The cpu backend's two sets of compositing loops (AVX2 and portable): both against the
reference at ray lengths around the AVX2 blocks, the choice between them (NERFX_CPU_PATH, ray
lengths), proof both run."""

from __future__ import annotations

import pytest
import torch

from nerfx.ops import composite_rays
from nerfx.ref import composite as ref
from tests.ops.conftest import cpu_has_avx2
from tests.ops.test_composite import packed, run_with_grads

# Ray lengths around the AVX2 loops' blocks of 8 (empty, partial, exact, one over, several).
AWKWARD_COUNTS = [0, 1, 7, 8, 9, 15, 16, 17, 23, 63, 64, 65, 130, 0, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("density", [3.0, 60.0], ids=["thin", "terminating"])
def test_cpu_paths_at_awkward_ray_lengths(cpu_path, dtype, density):
    """Both loops of the cpu backend at ray lengths around a block, light ending anywhere in a
    block (dense rays), forward and backward with every output's gradient, against the
    reference."""
    inputs = packed(AWKWARD_COUNTS * 3, dtype=dtype, seed=11, density=density)
    got = run_with_grads(lambda *a: composite_rays(*a, backend="cpu"), *inputs)
    want = run_with_grads(lambda *a: ref.composite_rays(*a), *inputs)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    names = ("color", "opacity", "depth", "weights", "grad_sigmas", "grad_rgbs")
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m, n=name: f"{n}: {m}")
    if density > 10:
        assert (got[3] == 0).any(), "some samples should lie past the threshold"


def test_cpu_path_is_chosen_as_asked(monkeypatch):
    """NERFX_CPU_PATH picks the loops on every call; unset or "avx2", the AVX2 ones are allowed
    where the CPU has them; a value it does not know is refused by name."""
    from nerfx import _ext

    composite_rays(*packed([2]), backend="cpu")  # loads nerfx._C
    has = "avx2" if cpu_has_avx2() else "portable"
    monkeypatch.delenv("NERFX_CPU_PATH", raising=False)
    assert _ext.build_info()["cpu_path"] == has
    monkeypatch.setenv("NERFX_CPU_PATH", "avx2")
    assert _ext.build_info()["cpu_path"] == has
    monkeypatch.setenv("NERFX_CPU_PATH", "portable")
    assert _ext.build_info()["cpu_path"] == "portable"
    monkeypatch.setenv("NERFX_CPU_PATH", "avx512")
    assert _ext.build_info()["cpu_path"].startswith("none: NERFX_CPU_PATH must be")
    with pytest.raises(RuntimeError, match='NERFX_CPU_PATH must be "auto", "avx2" or '
                                           '"portable", got "avx512"'):
        composite_rays(*packed([2], dtype=torch.float32), backend="cpu")


def runs_by_path(monkeypatch, inputs, paths=("auto", "avx2", "portable")):
    runs = {}
    for path in paths:
        monkeypatch.setenv("NERFX_CPU_PATH", path)
        runs[path] = run_with_grads(lambda *a: composite_rays(*a, backend="cpu"), *inputs)
    return runs


@pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2 loops")
def test_cpu_paths_are_different_loops(monkeypatch):
    """The two loops round differently (block scans, their own exp), so a large input tells
    them apart: proof that the variable reaches the launchers, forward and backward."""
    runs = runs_by_path(monkeypatch, packed([64] * 64, dtype=torch.float32, seed=2),
                        ("avx2", "portable"))
    assert not torch.equal(runs["avx2"][3], runs["portable"][3])  # weights: forward
    assert not torch.equal(runs["avx2"][4], runs["portable"][4])  # grad_sigmas: backward


@pytest.mark.skipif(not cpu_has_avx2(), reason="this CPU has no AVX2 loops")
def test_auto_takes_the_avx2_loops_for_long_rays_only(monkeypatch):
    """Under "auto" the AVX2 loops run where rays average 16 samples or more (they are slower
    on short rays): bit for bit the forced AVX2 loops on long rays, the portable ones on short."""
    for counts, same_as in (([30, 18, 40] * 20, "avx2"), ([4, 0, 7, 2] * 40, "portable")):
        runs = runs_by_path(monkeypatch, packed(counts, dtype=torch.float32, seed=6))
        for a, b in zip(runs["auto"], runs[same_as], strict=True):
            assert torch.equal(a, b), same_as
        other = "portable" if same_as == "avx2" else "avx2"
        assert not all(torch.equal(a, b) for a, b in zip(runs["auto"], runs[other],
                                                           strict=True)), other
