"""Attention: every backend against an fp64 reference (nerfx.ref.attention), gradients included."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from nerfx import ref
from nerfx.ops import BackendError, MultiHeadAttention, attention, attention_varlen, use_backend
from nerfx.ops.attention import BACKENDS, HEAD_DIMS
from tests.helpers import TRITON_ON_CPU, assert_lowprec_close, has_triton, requires_cuda

INTERP = pytest.mark.skipif(not (TRITON_ON_CPU and has_triton()),
                            reason="set TRITON_INTERPRET=1 (CI does)")
CUDA = [requires_cuda, pytest.mark.cuda]
# (backend, device) pairs; CUDA pairs skip without a GPU and run in benches/gpu_check.sh.
BACKEND_DEVICES = [
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("sdpa", "cpu", id="sdpa-cpu"),
    pytest.param("triton", "cpu", id="triton-interp", marks=INTERP),
    pytest.param("triton", "cuda", id="triton-cuda", marks=CUDA),
    pytest.param("sdpa", "cuda", id="sdpa-cuda", marks=CUDA),
    pytest.param("torch", "cuda", id="torch-cuda", marks=CUDA),
]


def interpreted(backend: str, device: str) -> bool:
    return backend == "triton" and device == "cpu"


def shapes_for(backend: str, device: str) -> list[tuple[int, int, int, int, int]]:
    """(B, H, Lq, Lk, D): awkward lengths (1, 17, 197, 1025), Lq != Lk both ways, D 40/64/128.
    The interpreter (~1 ms a program) gets the small ones; 1025 runs where it is cheap."""
    small = [(2, 3, 1, 1, 64), (1, 2, 17, 17, 40), (2, 2, 17, 197, 64), (1, 2, 197, 17, 128),
             (1, 2, 197, 197, 40)]
    if interpreted(backend, device):
        return small
    if device == "cpu":
        return small + [(1, 1, 1025, 197, 64)]
    return small + [(1, 2, 1025, 1025, 64), (2, 2, 1025, 197, 128), (1, 1, 1, 1025, 40),
                    (2, 4, 1025, 1025, 128)]


def make_qkv(b, h, lq, lk, d, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=gen, dtype=torch.float64)
               for n in (lq, lk, lk))
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]


def forward_backward(fn, q, k, v, seed=1):
    """(out, dq, dk, dv) of fn on these inputs, with a fixed random output gradient."""
    out = fn(q, k, v)
    gen = torch.Generator().manual_seed(seed)
    grad_out = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    return (out, *torch.autograd.grad(out, (q, k, v), grad_out))


def as_fp64(tensors):
    return [t.detach().double().requires_grad_() for t in tensors]


def naive_lowprec(q, k, v, causal):
    """Attention computed in the inputs' dtype throughout: PyTorch's own low-precision error."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, Lq, Lk]
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


NAMES = ("out", "dq", "dk", "dv")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_fp64_reference(backend, device, causal, dtype):
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for b, h, lq, lk, d in shapes_for(backend, device):
        qkv = make_qkv(b, h, lq, lk, d, dtype, device, seed=lq + lk + d)
        got = forward_backward(lambda q, k, v: attention(q, k, v, causal=causal,
                                                         backend=backend), *qkv)
        want = forward_backward(lambda q, k, v: ref.attention(q, k, v, causal=causal),
                                *as_fp64(qkv))
        assert got[0].shape == (b, h, lq, d) and got[0].dtype == dtype
        for name, a, w in zip(NAMES, got, want, strict=True):
            torch.testing.assert_close(a.double(), w, rtol=tol, atol=tol,
                                       msg=lambda m, n=name, s=(b, h, lq, lk, d): f"{n} {s}: {m}")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_within_torch_error(backend, device, causal, dtype):
    """flash-attention's rule: |got - ref64| <= k * |torch in dtype - ref64|, gradients too.

    k = 2 for the output; the gradients round P and dS to the input dtype before their dot
    products (as flash-attention does), which costs bf16's 8-bit mantissa up to ~3x torch's error
    on these few-element maxima, so k = 3 (fp16) and 4 (bf16) there. atol: with one key dq and dk
    are exactly zero and rounding leaves ~1e-7.
    """
    grad_k = 4.0 if dtype == torch.bfloat16 else 3.0
    for b, h, lq, lk, d in shapes_for(backend, device):
        qkv = make_qkv(b, h, lq, lk, d, dtype, device, seed=lq * lk + d)
        got = forward_backward(lambda q, k, v: attention(q, k, v, causal=causal,
                                                         backend=backend), *qkv)
        low = forward_backward(lambda q, k, v: naive_lowprec(q, k, v, causal), *qkv)
        want = forward_backward(lambda q, k, v: ref.attention(q, k, v, causal=causal),
                                *as_fp64(qkv))
        assert got[0].dtype == dtype
        for name, a, lo, w in zip(NAMES, got, low, want, strict=True):
            try:
                assert_lowprec_close(a, lo, w, k=grad_k if name != "out" else 2.0, atol=1e-5)
            except AssertionError as exc:
                raise AssertionError(f"{name} {(b, h, lq, lk, d)}: {exc}") from None


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
@pytest.mark.parametrize("causal", [False, True])
def test_variable_length_matches_per_sequence_calls(backend, device, causal):
    """Packed sequences (one empty, one without keys) equal one dense call per sequence."""
    lens_q, lens_k = [5, 0, 33, 17, 1], [9, 4, 0, 40, 1]
    h, d = 2, 40
    offsets = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], device=device)
    kv_offsets = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], device=device)
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(sum(lens_q), h, d, generator=gen, dtype=torch.float64)
    k, v = (torch.randn(sum(lens_k), h, d, generator=gen, dtype=torch.float64) for _ in "kv")
    q, k, v = (t.to(device).requires_grad_() for t in (q, k, v))
    got = forward_backward(lambda q, k, v: attention_varlen(
        q, k, v, offsets, kv_offsets, causal=causal, backend=backend), q, k, v)

    def per_sequence(q, k, v):
        pieces = []
        for i in range(len(lens_q)):
            qs, ks = slice(offsets[i], offsets[i + 1]), slice(kv_offsets[i], kv_offsets[i + 1])
            if lens_k[i] == 0:
                pieces.append(torch.zeros_like(q[qs]))
                continue
            dense = [t.transpose(0, 1)[None] for t in (q[qs], k[ks], v[ks])]  # [1, H, L, D]
            pieces.append(attention(*dense, causal=causal, backend="torch")[0].transpose(0, 1))
        return torch.cat(pieces)

    want = forward_backward(per_sequence, q, k, v)
    assert got[0].shape == (sum(lens_q), h, d)
    for name, a, w in zip(NAMES, got, want, strict=True):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_gradcheck_fp64(backend, device):
    q, k, v = make_qkv(1, 1, 5, 4, 16, torch.float64, device)
    for causal in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, k, v, c=causal: attention(q, k, v, causal=c, backend=backend), (q, k, v),
            fast_mode=interpreted(backend, device))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICES)
def test_scale_strides_and_all_head_dims(backend, device):
    """A custom scale; q, k, v as strided views of one fused projection; every triton head dim."""
    for d in HEAD_DIMS:
        gen = torch.Generator().manual_seed(d)
        qkv = torch.randn(2, 19, 3, 2, d, generator=gen, dtype=torch.float64).to(device)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, D] views, not contiguous
        assert not q.is_contiguous()
        got = attention(q, k, v, scale=0.3, backend=backend)
        want = ref.attention(q, k, v, scale=0.3)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_causal_is_top_left_aligned():
    """Query i sees keys j <= i whatever the lengths, as SDPA's is_causal."""
    q, k, v = make_qkv(1, 1, 3, 5, 16, torch.float64)
    out = ref.attention(q, k, v, causal=True)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0].detach())  # the first query: key 0 only
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICES if "triton" in p.id])
def test_triton_second_order_is_refused_clearly(backend, device):
    q, k, v = make_qkv(1, 1, 4, 4, 16, torch.float64, device)
    out = attention(q, k, v, backend=backend)
    (dq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(NotImplementedError, match="second-order gradients"):
        dq.sum().backward()


# --- MultiHeadAttention ------------------------------------------------------------------------

def test_module_matches_torch_multihead_attention():
    """Same weights in torch.nn.MultiheadAttention: self-attention and cross-attention agree."""
    torch.manual_seed(0)
    x, context = torch.randn(2, 11, 32), torch.randn(2, 6, 24)
    mha = MultiHeadAttention(32, 4)
    peer = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        peer.in_proj_weight.copy_(mha.qkv.weight)
        peer.in_proj_bias.copy_(mha.qkv.bias)
        peer.out_proj.weight.copy_(mha.proj.weight)
        peer.out_proj.bias.copy_(mha.proj.bias)
    torch.testing.assert_close(mha(x), peer(x, x, x, need_weights=False)[0])
    other = torch.randn(2, 5, 32)  # self-attention weights over another sequence
    torch.testing.assert_close(mha(x, other), peer(x, other, other, need_weights=False)[0])

    cross = MultiHeadAttention(32, 4, cross_dim=24)
    peer = torch.nn.MultiheadAttention(32, 4, kdim=24, vdim=24, batch_first=True)
    with torch.no_grad():
        peer.q_proj_weight.copy_(cross.q.weight)
        peer.k_proj_weight.copy_(cross.kv.weight[:32])
        peer.v_proj_weight.copy_(cross.kv.weight[32:])
        peer.in_proj_bias.copy_(torch.cat([cross.q.bias, cross.kv.bias]))
        peer.out_proj.weight.copy_(cross.proj.weight)
        peer.out_proj.bias.copy_(cross.proj.bias)
    out = cross(x, context)
    assert out.shape == (2, 11, 32)
    torch.testing.assert_close(out, peer(x, context, context, need_weights=False)[0])


def test_module_options_and_errors():
    mha = MultiHeadAttention(48, 3, qkv_bias=False)
    assert mha.qkv.bias is None and mha.head_dim == 16
    assert mha(torch.randn(1, 4, 48)).shape == (1, 4, 48)
    with pytest.raises(ValueError, match="not divisible by heads"):
        MultiHeadAttention(50, 3)
    with pytest.raises(ValueError, match="needs a context"):
        MultiHeadAttention(48, 3, cross_dim=8)(torch.randn(1, 4, 48))


@INTERP
def test_module_triton_matches_torch_backend():
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 2, cross_dim=40)
    x, context = torch.randn(2, 9, 64, requires_grad=True), torch.randn(2, 13, 40)
    with use_backend("triton"):
        got = mha(x, context)
    (gx,) = torch.autograd.grad(got.square().sum(), x)
    with use_backend("torch"):
        want = mha(x, context)
    (gx_want,) = torch.autograd.grad(want.square().sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, gx_want, rtol=1e-4, atol=1e-5)


# --- errors and backend choice -----------------------------------------------------------------

def _t(*shape, dtype=torch.float32, device="cpu"):
    return torch.zeros(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize("q,k,v,exc,match", [
    (_t(2, 3, 5, 16), _t(2, 3, 7, 16), _t(2, 3, 6, 16), ValueError, "same shape"),
    (_t(2, 3, 5, 16), _t(2, 4, 7, 16), _t(2, 4, 7, 16), ValueError, "must agree in batch"),
    (_t(2, 3, 5, 16), _t(2, 3, 7, 32), _t(2, 3, 7, 32), ValueError, "must agree in batch"),
    (_t(3, 5, 16), _t(3, 5, 16), _t(3, 5, 16), ValueError, r"\[batch, heads, seq, head_dim\]"),
    (_t(1, 1, 2, 16), _t(1, 1, 2, 16, dtype=torch.float16), _t(1, 1, 2, 16), TypeError,
     "share one dtype"),
    (_t(1, 1, 2, 16), _t(1, 1, 2, 16), _t(1, 1, 2, 16, dtype=torch.int64), TypeError,
     "v must be a floating-point"),
    (_t(1, 1, 2, 16), _t(1, 1, 2, 16, device="meta"), _t(1, 1, 2, 16), ValueError,
     "on one device"),
    (_t(1, 1, 2, 16), _t(1, 1, 0, 16), _t(1, 1, 0, 16), ValueError, "no keys"),
])
def test_bad_input_names_the_problem(q, k, v, exc, match):
    with pytest.raises(exc, match=match):
        attention(q, k, v)


def test_unsupported_head_dim_lists_the_supported_ones():
    q = _t(1, 2, 8, 48)
    with pytest.raises(BackendError, match="head dim 48 .*supported: 16, 32, 40, 64, 80, 96, 128"):
        attention(q, q, q, backend="triton")
    assert attention(q, q, q).shape == q.shape  # sdpa serves any head dim


def test_varlen_bad_offsets():
    q = _t(10, 2, 16)
    with pytest.raises(ValueError, match="rise from 0 to 10"):
        attention_varlen(q, q, q, torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="rise from 0 to 10"):
        attention_varlen(q, q, q, torch.tensor([0, 6, 4, 10]))
    with pytest.raises(ValueError, match="1-D int32/int64"):
        attention_varlen(q, q, q, torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match="same number of sequences"):
        attention_varlen(q, q, q, torch.tensor([0, 10]), torch.tensor([0, 5, 10]))
    with pytest.raises(ValueError, match=r"\[total, heads, head_dim\]"):
        attention_varlen(_t(1, 10, 2, 16), q, q, torch.tensor([0, 10]))


def test_auto_choice_and_environment_override(monkeypatch):
    monkeypatch.delenv("NERFX_BACKEND", raising=False)
    assert BACKENDS.choose("auto", "cpu", (torch.float32,), (64,)) == "sdpa"
    if has_triton():  # on CUDA: triton where it serves the head dim, sdpa otherwise
        assert BACKENDS.choose("auto", "cuda", (torch.bfloat16,), (64,)) == "triton"
        assert BACKENDS.choose("auto", "cuda", (torch.bfloat16,), (48,)) == "sdpa"
    monkeypatch.setenv("NERFX_BACKEND", "torch")
    assert BACKENDS.choose("auto", "cpu", (torch.float32,), (64,)) == "torch"
    with pytest.raises(BackendError, match="unknown backend 'flash'"):
        attention(*make_qkv(1, 1, 2, 2, 16), backend="flash")


# --- torch.compile -----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["sdpa", pytest.param("triton", marks=INTERP)])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 2)
    x = torch.randn(2, 17, 32, requires_grad=True)
    compiled = torch.compile(mha, fullgraph=True)
    with use_backend(backend):  # traced, and run, under the run's setting
        got = compiled(x)
        want = mha(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    (gx,) = torch.autograd.grad(got.sum(), x)
    (gx_want,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(gx, gx_want, rtol=1e-5, atol=1e-5)
