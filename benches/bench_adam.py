"""One optimiser step over an Instant-NGP hash table with some of its rows touched (gradient
nonzero), the rest exactly 0: SkipZeroAdam with each adam_step backend beside torch's dense
torch.optim.Adam(fused=True) over the whole table. The touch rates are those CPU training of the
built-in lego has (`--fast`, measured per step, benches/RESULTS.md): 54% over steps 10-50, 23%
over steps 50-256, 10% from step 1000 on. The table is HashGridEncoding's: L=16, F=2,
T=2^19 on the GPU (the paper's), T=2^17 on the CPU (the cpu preset's).
"""

from __future__ import annotations

import pytest
import torch

from benches.helpers import devices, run_benchmark
from nerfx.ops import BackendError, HashGridEncoding, SkipZeroAdam, use_backend
from nerfx.ops.adam import BACKENDS

LOG2_T = {"cpu": 17, "cuda": 19}
TOUCHED = (0.10, 0.23, 0.54)  # fractions of table rows with a nonzero gradient
IMPLS = ["torch", "cpu", "cuda", "torch-adam-fused"]
# Instant-NGP's Adam (paper sec. 4): betas (0.9, 0.99), eps 1e-15, lr 1e-2.
SETTINGS = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-15)


def make_table(device: str, touched_rate: float) -> torch.nn.Parameter:
    """HashGridEncoding's params [n_rows * 2] with .grad: touched_rate of the rows random, the
    rest 0."""
    table = HashGridEncoding(log2_hashmap_size=LOG2_T[device]).params
    gen = torch.Generator().manual_seed(0)
    n_rows = table.numel() // 2
    touched = torch.rand(n_rows, generator=gen) < touched_rate  # [n_rows]
    grad = torch.randn(n_rows, 2, generator=gen) * touched[:, None]  # [n_rows, F]
    param = torch.nn.Parameter(table.detach().to(device))
    param.grad = grad.view(-1).to(device)
    return param


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("touched", TOUCHED)
@pytest.mark.parametrize("impl", IMPLS)
def test_adam_step(benchmark, device, impl, touched):
    if impl == "torch-adam-fused":
        param = make_table(device, touched)
        optimizer = torch.optim.Adam([param], fused=True, **SETTINGS)
        step = optimizer.step
    else:
        try:
            BACKENDS.select(impl, torch.device(device), (torch.float32,))
        except BackendError as exc:
            pytest.skip(str(exc))
        param = make_table(device, touched)
        optimizer = SkipZeroAdam([param], skip_zero=True, **SETTINGS)

        def step():
            with use_backend(impl):
                optimizer.step()

    step()  # the state's first allocation stays out of the timing
    log2_t = LOG2_T[device]
    run_benchmark(benchmark, step, device,
                  group=f"adam step {device} table T=2^{log2_t} ({param.numel()} entries), "
                        f"{touched:.0%} of rows touched",
                  items=param.numel(), unit="entries")
