"""Test helpers: which backends can run here, and how to compare with a reference.

Imported by the test modules (`from tests.helpers import ...`) and by tests/conftest.py, which
imports it first so that TRITON_INTERPRET is set before any Triton kernel module is imported.
"""

from __future__ import annotations

import importlib
import os
from collections import Counter
from collections.abc import Callable

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors, so the README's test
# command tests them too; the variable must be set before any Triton kernel module is imported.
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
TRITON_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1"

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU; runs in "
                                   "benches/gpu_check.sh")


def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# (backend, device) pairs every op test runs over. CUDA pairs skip without a GPU and run in
# benches/gpu_check.sh; triton on CPU needs TRITON_INTERPRET=1, which .ci/run sets.
BACKEND_DEVICES = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("cpu", "cpu", id="cpu"),
    pytest.param("triton", "cpu", id="triton-interp",
                 marks=pytest.mark.skipif(not (TRITON_ON_CPU and has_triton()),
                                          reason="triton is not installed, or "
                                          "TRITON_INTERPRET=0 was set")),
    pytest.param("cuda", "cuda", id="cuda", marks=[requires_cuda, pytest.mark.cuda]),
    pytest.param("triton", "cuda", id="triton-cuda", marks=[requires_cuda, pytest.mark.cuda]),
    pytest.param("torch", "cuda", id="torch-cuda", marks=[requires_cuda, pytest.mark.cuda]),
]


def assert_lowprec_close(out: torch.Tensor, lowprec_ref: torch.Tensor, ref64: torch.Tensor,
                         k: float = 2.0, atol: float = 1e-6) -> None:
    """flash-attention's rule: |out - ref64| <= k * |lowprec_ref - ref64| + atol, in the max."""
    err = (out.double() - ref64).abs().max().item()
    torch_err = (lowprec_ref.double() - ref64).abs().max().item()
    assert err <= k * torch_err + atol, f"error {err:.3g} vs torch's {torch_err:.3g}"


def outputs_per_attention_backend(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module,
                                  forward: Callable[[], torch.Tensor],
                                  backends: tuple[str, ...] = ("torch", "sdpa")
                                  ) -> dict[str, torch.Tensor]:
    """forward() under nerfx.ops.use_backend(name) for each name, checking that every attention
    layer of model reached that backend's function once: "torch" the reference in nerfx.ref,
    "sdpa" torch's scaled_dot_product_attention. -> {name: output}."""
    from nerfx.ops import MultiHeadAttention, use_backend

    op = importlib.import_module("nerfx.ops.attention")  # the module: nerfx.ops.attention is the op

    calls: Counter[str] = Counter()

    def counted(name: str, fn: Callable) -> Callable:
        def run(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(op, "reference_attention", counted("torch", op.reference_attention))
    monkeypatch.setattr(op.F, "scaled_dot_product_attention",
                        counted("sdpa", op.F.scaled_dot_product_attention))
    layers = sum(isinstance(m, MultiHeadAttention) for m in model.modules())
    outputs = {}
    for name in backends:
        calls.clear()
        with use_backend(name):
            outputs[name] = forward()
        assert dict(calls) == {name: layers}, (name, dict(calls))
    return outputs


def folder_digest(folder) -> str:
    """SHA-256 over every file's path (relative to `folder`) and bytes, in sorted order."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()
