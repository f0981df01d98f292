"""The cpu backend's Adam loops for float tables (the AVX-512 lines under NERFX_CPU_PATH=auto
where the CPU has it, the AVX2 lines under "avx2" or without it, the baseline batches under
"portable"): each against the reference on tables of awkward sizes as training touches them, and
all of them bit for bit alike (they do the same IEEE operations per entry, whatever the batch
width)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nerfx.ops import adam_step
from nerfx.ref import adam as ref
from tests.ops.test_adam import NGP, bits, clone_all, table

PATHS = ("auto", "avx2", "portable")


def cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False


def touched_rows(n_rows: int, rate: float, seed: int, by_row: bool = True) -> torch.Tensor:
    """[n_rows * 2] float32 gradient of a hash table's F=2 rows, `rate` of the rows nonzero (a
    row's two lanes together, as training has them; with by_row False, each lane on its own, so
    the two lanes of a row come to different counts), -0.0 in some untouched lanes."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n_rows, 2, generator=gen)
    rows = rows + rows.sign() * 0.05
    rows = rows * (torch.rand(n_rows, 1 if by_row else 2, generator=gen) < rate)
    rows[::7] = torch.where(rows[::7] == 0, -0.0, rows[::7])
    return rows.reshape(-1)


@pytest.mark.parametrize("n_rows", [3, 8, 9, 1000, 4099, 20483])  # lines of 16, chunks of 4096
@pytest.mark.parametrize("rate", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("by_row", [True, False], ids=["rows", "lanes"])
def test_every_cpu_loop_equals_the_reference_and_each_other(monkeypatch, n_rows, rate, by_row):
    n = 2 * n_rows
    start = table(n, torch.float32, "cpu", seed=n_rows)
    want = clone_all(start)
    grads = [touched_rows(n_rows, rate, seed=k, by_row=by_row) for k in range(4)]
    results = {}
    for path in PATHS:
        monkeypatch.setenv("NERFX_CPU_PATH", path)
        state = clone_all(start)
        for grad in grads:
            adam_step(state[0], grad, *state[1:], **NGP, backend="cpu")
        results[path] = state
    for grad in grads:
        ref.adam_step(want[0], grad, *want[1:], **NGP)
    for path, state in results.items():
        assert torch.equal(state[3], want[3]), path
        for got, expected in zip(state[:3], want[:3], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=path)
        for got, auto in zip(state, results["auto"], strict=True):
            assert torch.equal(bits(got), bits(auto)), path


@pytest.mark.parametrize("path", PATHS)
def test_untouched_lanes_of_a_touched_line_keep_their_bits(monkeypatch, path):
    """The line loops (masked stores in AVX-512, blends in AVX2) and the batches change a
    touched line's touched lanes only: every other lane keeps its value, moments and count
    exactly, including a lane whose gradient is -0.0."""
    monkeypatch.setenv("NERFX_CPU_PATH", path)
    n = 64
    state = table(n, torch.float32, "cpu", seed=3)
    before = clone_all(state)
    grad = torch.zeros(n)
    grad[[0, 15, 17, 33, 63]] = torch.tensor([0.5, -1.0, 2.0, 0.25, -0.75])
    grad[[1, 16, 62]] = -0.0
    adam_step(state[0], grad, *state[1:], **NGP, backend="cpu")
    zero = grad == 0
    for now, then in zip(state, before, strict=True):
        assert torch.equal(bits(now)[zero], bits(then)[zero])
        assert not torch.equal(bits(now)[~zero], bits(then)[~zero])


def test_avx512_is_present_where_this_file_claims_to_test_it():
    """Say which loop "auto" exercised here, so a run on a CPU without AVX-512 is not mistaken
    for one that tested it."""
    from nerfx import _ext

    adam_step(*table(4, torch.float32, "cpu")[:1], torch.ones(4),
              *table(4, torch.float32, "cpu")[1:], **NGP, backend="cpu")
    assert _ext.build_info()["adam_cpu_loop"] == ("avx512" if cpu_has_avx512() else
                                                 _ext.build_info()["cpu_path"])
