"""Hash-grid encoding: the backends' checks, their choice, torch.compile, and the Triton
kernels' indexing, host copies and atomics (the numbers against the reference are in
tests/ops/test_hashgrid.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from nerfx import ref
from nerfx.ops import BackendError, HashGridEncoding, hash_encode, use_backend
from nerfx.ref.hashgrid import grid_layout
from tests.helpers import TRITON_ON_CPU, has_triton, requires_cuda
from tests.ops.test_hashgrid import config, make_inputs

# --- the triton kernels' indexing, host copies and atomics ------------------------------------

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
else:
    from nerfx.kernels import hashgrid as triton_hashgrid

    @triton.jit
    def _offsets_probe(out_ptr, block, level, n_levels, F: tl.constexpr, BLOCK: tl.constexpr):
        """Stores the row offsets the kernels compute for the points of block `block`."""
        points = triton_hashgrid._block_points(block, BLOCK)
        lanes = tl.arange(0, BLOCK)[:, None] * F + tl.arange(0, F)[None, :]
        tl.store(out_ptr + lanes, triton_hashgrid._row_offsets(points, level, n_levels, F))


@pytest.mark.skipif(not TRITON_ON_CPU, reason="runs in the Triton interpreter")
def test_triton_offsets_do_not_wrap_past_2_31():
    """points * (L * F) and points * D are int64: at program 2^20 - 1 of 128 points, with
    L * F = 32 values per point, the row offsets reach 2^32 - 1."""
    if triton is None:
        pytest.skip("triton is not installed")
    kernels = triton_hashgrid
    block, level, n_levels, f = 2**20 - 1, 15, 16, 2
    out = torch.zeros(kernels.BLOCK, f, dtype=torch.int64)
    _offsets_probe[(1,)](out, block, level, n_levels, F=f, BLOCK=kernels.BLOCK)
    points = block * kernels.BLOCK + torch.arange(kernels.BLOCK, dtype=torch.int64)
    want = points[:, None] * (n_levels * f) + level * f + torch.arange(f)[None, :]
    assert want.max() > 2**31, "past int32"
    assert torch.equal(out, want)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_more_than_2_31_outputs(backend):
    """N * L * F > 2^31 (8.6 GB of output): the last points still encode right."""
    cfg = dict(n_levels=16, n_features_per_level=2, log2_hashmap_size=12, base_resolution=4,
               per_level_scale=1.5)
    n = 2**26 + 1000
    x = torch.rand(n, 3, device="cuda")
    _, params = make_inputs(1, 3, cfg, device="cuda")
    out = hash_encode(x, params.detach(), backend=backend, **cfg)
    torch.testing.assert_close(out[-2000:], ref.hash_encode(x[-2000:], params.detach(), **cfg))
    del out


@pytest.mark.skipif(not TRITON_ON_CPU, reason="runs in the Triton interpreter")
def test_triton_level_geometry_is_copied_to_the_device_once(monkeypatch):
    """A host list -> device tensor copy waits for the device: the level offsets and
    resolutions are made once per layout and device, not on every forward and backward."""
    pytest.importorskip("triton")
    cfg = config(2)
    x, params = make_inputs(20, 3, cfg)
    hash_encode(x, params, backend="triton", **cfg).sum().backward()  # the first call makes them

    def no_host_copies(*args, **kwargs):
        raise AssertionError("torch.tensor called from a host list")

    monkeypatch.setattr(torch, "tensor", no_host_copies)
    hash_encode(x, params, backend="triton", **cfg).sum().backward()


def test_triton_kernels_compile_for_a_gpu_with_relaxed_atomics():
    """Compiled to PTX for sm_90 (no GPU needed), which the interpreter does not do: the kernels
    compile with this Triton (3.8 refuses a `b: tl.constexpr` re-bound in a static_range loop),
    and the backward's adds are relaxed atomics, not the default acq_rel (a fence each): they
    commute and nothing reads them back."""
    pytest.importorskip("triton")
    code = textwrap.dedent("""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from nerfx.kernels import hashgrid as kernels
        ptrs = {"x_ptr": "*fp32", "params_ptr": "*fp32", "offsets_ptr": "*i64",
                "resolutions_ptr": "*i64"}
        def ptx(fn, sig, const):
            sig = {**ptrs, **sig, **{k: "constexpr" for k in const}}
            src = ASTSource(fn=fn, signature=sig, constexprs=const)
            return triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        shape = dict(D=3, CORNERS=8, F=2, BLOCK=kernels.BLOCK)
        ptx(kernels._forward_kernel, {"out_ptr": "*fp32", "n_points": "i32", "n_levels": "i32"},
            shape)
        code = ptx(kernels._backward_kernel,
                   {"grad_out_ptr": "*fp32", "grad_params_ptr": "*fp32", "grad_x_ptr": "*fp32",
                    "n_points": "i32", "n_levels": "i32"},
                   dict(NEEDS_PARAMS=True, NEEDS_X=True, **shape))
        print(chr(10).join(l for l in code.splitlines() if "atom." in l or "red." in l))
    """)
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
                          timeout=600)
    if proc.returncode != 0 and "No module named 'triton.backends.nvidia'" in proc.stderr:
        pytest.skip("triton without its CUDA backend")
    assert proc.returncode == 0, proc.stderr[-3000:]
    atomics = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(atomics) >= 8 + 3, proc.stdout  # one per corner (F lanes each), one per axis
    assert "acq_rel" not in proc.stdout and "relaxed" in proc.stdout, proc.stdout


# --- errors and backend choice ---------------------------------------------------------------

@pytest.mark.parametrize("x,params_size,exc,match", [
    (torch.rand(5, 4), None, ValueError, r"\[\.\.\., 2\] or \[\.\.\., 3\]"),
    (torch.rand(5), None, ValueError, r"\[\.\.\., 2\] or \[\.\.\., 3\]"),
    (torch.randint(0, 2, (5, 3)), None, TypeError, "x must be a floating-point"),
    (torch.rand(5, 3, dtype=torch.complex64), None, TypeError, "x must be a floating-point"),
    (torch.rand(5, 3), 11, ValueError, r"params must be \[n_params\] = \[\d+\], got \[11\]"),
])
def test_bad_input_names_the_argument(x, params_size, exc, match):
    cfg = config(2)
    layout = grid_layout(3, 5, 2, 10, 3, 1.7)
    params = torch.zeros(params_size or layout.n_params)
    with pytest.raises(exc, match=match):
        hash_encode(x, params, backend="cpu", **cfg)


def test_the_op_refuses_a_table_that_does_not_start_at_0():
    """Called directly (torch.ops), a first offset below 0 would read before the table."""
    from nerfx.ops.hashgrid import BACKENDS

    try:
        BACKENDS.select("cpu", torch.device("cpu"), (torch.float32,))  # loads nerfx._C
    except BackendError as exc:
        pytest.skip(str(exc))
    torch.ops.nerfx.hash_encode(torch.zeros(1, 2), torch.zeros(8), [0, 8], [1], 1)  # valid
    with pytest.raises(RuntimeError, match=r"offsets\[0\] must be 0"):
        torch.ops.nerfx.hash_encode(torch.zeros(1, 2), torch.zeros(36)[32:], [-4, 4], [1], 1)


def test_integer_params_and_device_mismatch():
    cfg = config(2)
    n = grid_layout(3, 5, 2, 10, 3, 1.7).n_params
    with pytest.raises(TypeError, match="params must be a floating-point"):
        hash_encode(torch.rand(4, 3), torch.zeros(n, dtype=torch.int32), **cfg)
    with pytest.raises(ValueError, match="params is on meta but x is on cpu"):
        hash_encode(torch.rand(4, 3), torch.zeros(n, device="meta"), **cfg)


def test_explicit_backend_that_cannot_serve_says_why(monkeypatch):
    cfg = config(2)
    x, params = make_inputs(3, 3, cfg)
    with pytest.raises(BackendError, match="'cuda' cannot serve.*runs on cuda tensors, not cpu"):
        hash_encode(x, params, backend="cuda", **cfg)
    with pytest.raises(BackendError, match="unknown backend 'fast'"):
        hash_encode(x, params, backend="fast", **cfg)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="TRITON_INTERPRET=1|triton is not installed"):
        hash_encode(x, params, backend="triton", **cfg)


def test_auto_and_environment_override(monkeypatch):
    from nerfx.ops.hashgrid import BACKENDS

    assert BACKENDS.select("auto", torch.device("cpu"), (torch.float32,)).name == "cpu"
    monkeypatch.setenv("NERFX_BACKEND", "torch")
    assert BACKENDS.select("auto", torch.device("cpu"), (torch.float32,)).name == "torch"
    assert BACKENDS.select("cpu", torch.device("cpu"), (torch.float32,)).name == "cpu"


INTERP = pytest.mark.skipif(not (TRITON_ON_CPU and has_triton()),
                            reason="set TRITON_INTERPRET=1 (CI does)")


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=INTERP)])
def test_second_order_gradient_is_refused_clearly(backend):
    cfg = config(2)
    x, params = make_inputs(5, 3, cfg)
    out = hash_encode(x, params, backend=backend, **cfg)
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError,
                       match=f"second-order gradients are not implemented by the {backend}"):
        gx.sum().backward()


# --- torch.compile -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "torch", pytest.param("triton", marks=INTERP)])
def test_torch_compile_fullgraph(backend):
    """Every backend is a torch.library op (or plain torch): the whole module traces as one
    graph, forward and backward."""
    torch._dynamo.reset()
    enc = HashGridEncoding(n_levels=4, log2_hashmap_size=10)
    x = torch.rand(33, 3, requires_grad=True)
    compiled = torch.compile(enc, fullgraph=True)
    with use_backend(backend):
        got = compiled(x)
        want = enc(x)
    torch.testing.assert_close(got, want)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, gx_want)


def test_triton_is_tested_in_ci():
    """Without a GPU the suite runs Triton in its interpreter (tests/conftest.py sets
    TRITON_INTERPRET=1), so the triton backend's tests above cannot silently skip."""
    import os

    if not torch.cuda.is_available():
        assert TRITON_ON_CPU, "tests/conftest.py must set TRITON_INTERPRET=1 without a GPU"
    if os.environ.get("CI") == "true" and os.environ.get("NERFX_FRESH_INSTALL") != "1":
        import triton  # noqa: F401  (README command 1 installs it: the [triton] extra)


def test_missing_extension_is_reported_with_the_fix(monkeypatch):
    """A broken build: the compiled backends say why and how to fix it; torch still serves."""
    from nerfx import _ext

    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", "ImportError: libfoo.so: cannot open shared object file")
    cfg = config(2)
    x, params = make_inputs(3, 3, cfg)
    with pytest.raises(BackendError, match=r"nerfx._C is unavailable \(ImportError: libfoo.*"
                                           r"pip install --no-build-isolation -e \."):
        hash_encode(x, params, backend="cpu", **cfg)
    out = hash_encode(x, params, backend="auto", **cfg)  # falls back to the reference
    torch.testing.assert_close(out, ref.hash_encode(x, params, **cfg))
