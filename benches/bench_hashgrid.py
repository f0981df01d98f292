"""Hash-grid encoding, paper config (L=16, F=2, T=2^19; on the CPU also T=2^17, what the CPU
recipe trains): every backend beside the reference, torch.compile of the reference and
tiny-cuda-nn where importable. Forward and forward+backward; the backward takes a fixed random
gradient of the output (as bench_attention.py does), so a row times the op and not a loss: a
`square().sum()` loss and its gradient on the 8 MB output took 13-22 % of the cpu row's time at
T=2^17 (benches/RESULTS.md, 2026-12-04), the same work beside every backend.
"""

from __future__ import annotations

import pytest
import torch

from benches.helpers import devices, run_benchmark
from nerfx import ref
from nerfx.ops import BackendError, HashGridEncoding, hash_encode
from nerfx.ops.hashgrid import BACKENDS

SIZES = {"cpu": [2**16], "cuda": [2**18, 2**20]}
TABLES = {"cpu": [17, 19], "cuda": [19]}  # log2 of the rows per level, T
IMPLS = ["torch", "torch-compile", "cpu", "cuda", "triton", "tcnn"]


def make_impl(impl: str, device: str, log2_t: int = 19):
    """A callable x -> features for this implementation, or a pytest skip with the reason."""
    enc = HashGridEncoding(log2_hashmap_size=log2_t).to(device)
    if impl == "torch-compile":
        return enc, torch.compile(lambda x: ref.hash_encode(x, enc.params, **enc.config))
    if impl == "tcnn":
        tcnn = pytest.importorskip("tinycudann")
        if device != "cuda":
            pytest.skip("tiny-cuda-nn runs on CUDA only")
        cfg = {"otype": "HashGrid", **enc.config}
        module = tcnn.Encoding(3, cfg, dtype=torch.float32).to(device)
        return module, module
    try:
        BACKENDS.select(impl, torch.device(device), (torch.float32,))
    except BackendError as exc:
        pytest.skip(str(exc))
    return enc, lambda x: hash_encode(x, enc.params, backend=impl, **enc.config)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("log2_n", [16, 18, 20])
@pytest.mark.parametrize("log2_t", [17, 19])
def test_hash_encode(benchmark, device, impl, mode, log2_n, log2_t):
    n = 2**log2_n
    if n not in SIZES[device] or log2_t not in TABLES[device]:
        pytest.skip(f"N=2^{log2_n}, T=2^{log2_t} is not benchmarked on {device}")
    module, fn = make_impl(impl, device, log2_t)
    x = torch.rand(n, 3, device=device)
    params = list(module.parameters())

    def forward():
        with torch.no_grad():
            fn(x)

    with torch.no_grad():
        grad_out = torch.randn_like(fn(x))  # [n, L * F], the output's dtype

    def forward_backward():
        torch.autograd.grad(fn(x), params, grad_out)

    run_benchmark(benchmark, forward if mode == "fwd" else forward_backward, device,
                  group=f"hash_encode {mode} {device} N=2^{log2_n} T=2^{log2_t}", items=n,
                  unit="points")
