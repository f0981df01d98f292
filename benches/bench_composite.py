"""Compositing 2^18 rays x 64 packed samples (GPU; 2^14 rays on the CPU), forward and
forward+backward: every backend, the padded PyTorch reference, and nerfacc when importable.

Compositing is memory-bound, so each row also gives its effective bandwidth over the bytes that
must move, beside a device copy of as many bytes ("copy"): the forward reads sigma, t_start,
t_end and rgb and writes the weights (28 B a sample in fp32); the backward reads the four again
and writes dsigma and drgb (40 B), 68 B a sample for forward+backward.
"""

from __future__ import annotations

import pytest
import torch

from benches.helpers import devices, run_benchmark
from nerfx.ops import BackendError, composite_rays
from nerfx.ops.composite import BACKENDS
from nerfx.ref.composite import composite_rays_padded

RAYS = {"cpu": 2**14, "cuda": 2**18}
SAMPLES = 64
# "<backend>+fp16-rgbs": half colours read as they are (what a mixed-precision field gives);
# "<backend>+cast-rgbs": the same half colours widened to float32 first (the copy the kernels'
# half reads avoid). "cpu-portable...": the cpu backend's portable loops (NERFX_CPU_PATH=portable)
# beside its AVX2 ones ("cpu...", where the CPU has them).
IMPLS = ["torch", "torch-padded", "cpu", "cpu-portable", "cuda", "triton", "cpu+fp16-rgbs",
         "cpu-portable+fp16-rgbs", "cuda+fp16-rgbs", "cuda+cast-rgbs", "triton+fp16-rgbs",
         "nerfacc", "copy"]
BYTES_PER_SAMPLE = {"fwd": 4 + 4 + 4 + 12 + 4, "fwd+bwd": 28 + 24 + 4 + 12}  # fp32, see above
HALF_RGB_SAVES = {"fwd": 6, "fwd+bwd": 18}  # bytes a sample: rgb read (and drgb written) in half


def make_samples(n_rays: int, device: str):
    gen = torch.Generator().manual_seed(0)
    n = n_rays * SAMPLES
    sigmas = (torch.rand(n, generator=gen) * 2).to(device).requires_grad_()
    rgbs = torch.rand(n, 3, generator=gen).to(device).requires_grad_()
    t = torch.linspace(2.0, 6.0, SAMPLES + 1)
    t_start = t[:-1].repeat(n_rays).to(device)
    t_end = t[1:].repeat(n_rays).to(device)
    offsets = torch.arange(0, n + 1, SAMPLES, device=device)
    return sigmas, rgbs, t_start, t_end, offsets


def implementation(impl: str, device: str, n_rays: int):
    if impl == "torch-padded":
        mask = torch.ones(n_rays, SAMPLES, dtype=torch.bool, device=device)
        return lambda s, c, t0, t1, off: composite_rays_padded(
            s.view(n_rays, SAMPLES), c.view(n_rays, SAMPLES, 3), t0.view(n_rays, SAMPLES),
            t1.view(n_rays, SAMPLES), mask)
    if "+" in impl:
        backend, variant = impl.split("+")
        try:
            BACKENDS.select(backend, torch.device(device), (torch.float32, torch.float16),
                            problem=(torch.float32, torch.float32, torch.float16))
        except BackendError as exc:
            pytest.skip(str(exc))
        if variant == "cast-rgbs":
            return lambda s, c, *rest: composite_rays(s, c.float(), *rest, backend=backend)
        return lambda *a: composite_rays(*a, backend=backend)
    if impl == "nerfacc":
        nerfacc = pytest.importorskip("nerfacc")
        if device != "cuda":
            pytest.skip("nerfacc's packed rendering is benchmarked on CUDA only")
        rays = torch.arange(n_rays, device=device).repeat_interleave(SAMPLES)

        def run(s, c, t0, t1, off):
            weights, _, _ = nerfacc.render_weight_from_density(t0, t1, s, ray_indices=rays,
                                                               n_rays=n_rays)
            return (nerfacc.accumulate_along_rays(weights, c, ray_indices=rays, n_rays=n_rays),)
        return run
    try:
        BACKENDS.select(impl, torch.device(device), (torch.float32,))
    except BackendError as exc:
        pytest.skip(str(exc))
    return lambda *a: composite_rays(*a, backend=impl)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_composite_rays(benchmark, device, impl, mode, monkeypatch):
    n_rays = RAYS[device]
    if impl.startswith("cpu-portable"):
        monkeypatch.setenv("NERFX_CPU_PATH", "portable")
        impl = impl.replace("cpu-portable", "cpu")
    nbytes = BYTES_PER_SAMPLE[mode] * n_rays * SAMPLES
    benchmark.extra_info["bytes"] = nbytes
    group = f"composite_rays {mode} {device} {n_rays}x{SAMPLES}"
    if impl == "copy":  # reads nbytes / 2 and writes as many
        source = torch.ones(nbytes // 2, dtype=torch.uint8, device=device)
        target = torch.empty_like(source)
        run_benchmark(benchmark, lambda: target.copy_(source), device, group=group,
                      items=n_rays * SAMPLES, unit="samples")
        return
    inputs = make_samples(n_rays, device)
    fn = implementation(impl, device, n_rays)
    if "rgbs" in impl:  # half colours, a leaf like the others
        inputs = (inputs[0], inputs[1].detach().half().requires_grad_(), *inputs[2:])
        benchmark.extra_info["bytes"] = nbytes - HALF_RGB_SAVES[mode] * n_rays * SAMPLES

    def forward():
        with torch.no_grad():
            fn(*inputs)

    def forward_backward():
        color = fn(*inputs)[0]
        torch.autograd.grad(color.sum(), inputs[:2])

    run_benchmark(benchmark, forward if mode == "fwd" else forward_backward, device,
                  group=group, items=n_rays * SAMPLES, unit="samples")
