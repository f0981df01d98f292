"""Scaled dot-product attention: the public op, its backends and the multi-head module.

    out = attention(q, k, v)                    # q [B, H, Lq, D], k, v [B, H, Lk, D] -> like q
    out = attention_varlen(q, k, v, offsets)    # packed [total, H, D] with CSR offsets [B + 1]
    mha = MultiHeadAttention(dim=768, heads=12) # x: [B, N, 768] -> [B, N, 768]

Backends: `triton` (nerfx.kernels.attention: FlashAttention-2 forward and backward, CUDA tensors,
or CPU tensors under TRITON_INTERPRET=1; head dims 16, 32, 40, 64, 80, 96, 128), `sdpa`
(torch.nn.functional.scaled_dot_product_attention, which picks flash / cuDNN / memory-efficient /
math itself) and `torch` (the reference in nerfx.ref.attention). `auto` takes triton on CUDA
tensors where it serves the head dim and dtype, sdpa otherwise (always on the CPU).

`causal=True` lets query i see keys j <= i (top-left aligned, as SDPA's `is_causal`).
The triton backend registers as the torch.library ops nerfx::flash_attention(_backward), with
fake-tensor and autograd registrations, so torch.compile(fullgraph=True) traces through it.
Second-order gradients go through the sdpa and torch backends only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfx.ops._dispatch import Backend, OpBackends, register, triton_available
from nerfx.ops._library import register_op
from nerfx.ref.attention import attention as reference_attention

HEAD_DIMS = (16, 32, 40, 64, 80, 96, 128)  # served by the triton kernels
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
AUTO_ORDER = {"cuda": ("triton", "sdpa", "torch"), "cpu": ("sdpa", "torch")}


# --- triton backend: torch.library ops with fake and autograd registrations ----------------

def _lse_shape(q: Tensor, offsets: Tensor | None) -> tuple[int, ...]:
    # Dense q [B, H, Lq, D] -> [B, H, Lq]; packed q [total, H, D] -> [H, total].
    return (q.shape[1], q.shape[0]) if offsets is not None else tuple(q.shape[:3])


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("nerfx::flash_attention", mutates_args=())
def _flash_attention(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor | None,
                     kv_offsets: Tensor | None, max_q: int, max_k: int, scale: float,
                     causal: bool) -> tuple[Tensor, Tensor]:
    """-> (out like q, base-2 log-sum-exp of the scaled scores [B, H, Lq] or [H, total_q])."""
    from nerfx.kernels import attention as kernels

    return kernels.forward(q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal)


@torch.library.custom_op("nerfx::flash_attention_backward", mutates_args=())
def _flash_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                              lse: Tensor, offsets: Tensor | None, kv_offsets: Tensor | None,
                              max_q: int, max_k: int, scale: float,
                              causal: bool) -> tuple[Tensor, Tensor, Tensor]:
    from nerfx.kernels import attention as kernels

    return kernels.backward(grad_out, q, k, v, out, lse, offsets, kv_offsets, max_q, max_k,
                            scale, causal)


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, offsets, kv_offsets)
    ctx.args = (max_q, max_k, scale, causal)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, offsets, kv_offsets = ctx.saved_tensors
    dq, dk, dv = torch.ops.nerfx.flash_attention_backward(grad_out, q, k, v, out, lse, offsets,
                                                          kv_offsets, *ctx.args)
    return dq, dk, dv, None, None, None, None, None, None


def _fake(q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal):
    from nerfx.kernels.attention import empty_out

    return empty_out(q, offsets), q.new_empty(_lse_shape(q, offsets), dtype=_acc_dtype(q.dtype))


def _fake_backward(grad_out, q, k, v, out, lse, offsets, kv_offsets, max_q, max_k, scale, causal):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


register_op("flash_attention", fake=_fake, setup_context=_setup_context, backward=_backward,
            backward_op="flash_attention_backward", fake_backward=_fake_backward,
            label="attention", no_second_order="the triton backend",
            instead="backend='sdpa' or 'torch'")


def _triton_limits(problem: tuple) -> str | None:
    (head_dim,) = problem
    if head_dim not in HEAD_DIMS:
        return (f"does not support head dim {head_dim} (supported: "
                f"{', '.join(map(str, HEAD_DIMS))})")
    return None


def _run_triton(q, k, v, scale, causal):
    return _flash_attention(q, k, v, None, None, q.shape[2], k.shape[2], scale, causal)[0]


def _run_triton_varlen(q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal):
    return _flash_attention(q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal)[0]


# --- sdpa and torch backends -------------------------------------------------------------------

def _run_sdpa(q, k, v, scale, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)


def _run_reference(q, k, v, scale, causal):
    return reference_attention(q, k, v, scale=scale, causal=causal)


def _per_sequence(dense_fn):
    """A varlen runner from a dense one: one call per sequence (no padding, no fusion)."""

    def run(q, k, v, offsets, kv_offsets, max_q, max_k, scale, causal):
        qo, ko = offsets.tolist(), kv_offsets.tolist()
        pieces = []
        for b in range(len(qo) - 1):
            if ko[b + 1] == ko[b]:  # no keys: zeros, as the triton kernel gives
                pieces.append(q.new_zeros(qo[b + 1] - qo[b], q.shape[1], v.shape[-1]))
                continue
            qb = q[qo[b]:qo[b + 1]].transpose(0, 1)[None]  # [1, H, Lq_b, D]
            kb = k[ko[b]:ko[b + 1]].transpose(0, 1)[None]  # [1, H, Lk_b, D]
            vb = v[ko[b]:ko[b + 1]].transpose(0, 1)[None]  # [1, H, Lk_b, D]
            pieces.append(dense_fn(qb, kb, vb, scale, causal)[0].transpose(0, 1))
        if not pieces:
            return q.new_zeros(0, q.shape[1], v.shape[-1])
        return torch.cat(pieces, dim=0)  # [total_q, H, D]

    return run


BACKENDS = register(OpBackends("attention", [
    Backend("triton", ("cuda", "cpu"), FLOATS, _run_triton, triton_available, _triton_limits),
    Backend("sdpa", ("cuda", "cpu", "mps", "xpu"), FLOATS, _run_sdpa),
    Backend("torch", ("cuda", "cpu", "mps", "xpu"), FLOATS, _run_reference),
], auto_order=AUTO_ORDER))

_VARLEN_RUN = {"triton": _run_triton_varlen, "sdpa": _per_sequence(_run_sdpa),
               "torch": _per_sequence(_run_reference)}


# --- validation ----------------------------------------------------------------------------------

def _check_tensors(name: str, q, k, v, ndim: int, layout: str) -> None:
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: {arg} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != ndim:
            raise ValueError(f"{name}: {arg} must have shape {layout}, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {arg} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{name}: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{name}: q, k and v must be on one device, got {q.device}, "
                         f"{k.device}, {v.device}")


def _resolve_scale(name: str, scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"{name}: scale must be finite, got {scale}")
    return scale


def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None,
              causal: bool = False, backend: str = "auto") -> Tensor:
    """softmax(q kᵀ · scale) v, without materialising the scores on the triton backend.

    q: [B, H, Lq, D], k: [B, H, Lk, D], v: [B, H, Lk, D] of one floating dtype and device
    -> [B, H, Lq, D] in that dtype. scale defaults to 1/sqrt(D). fp16/bf16 accumulate in fp32.
    """
    name = "attention"
    _check_tensors(name, q, k, v, 4, "[batch, heads, seq, head_dim]")
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in "
                         f"batch, heads and head_dim ([B, H, Lq, D] and [B, H, Lk, D])")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError(f"{name}: k and v have no keys (Lk = 0) for {q.shape[2]} queries")
    head_dim = int(q.shape[3])
    scale = _resolve_scale(name, scale, head_dim)
    chosen = BACKENDS.select(backend, q.device, (q.dtype,), (head_dim,))
    return chosen.run(q, k, v, scale, bool(causal))


def attention_varlen(q: Tensor, k: Tensor, v: Tensor, offsets: Tensor,
                     kv_offsets: Tensor | None = None, *, max_seqlen: int | None = None,
                     max_seqlen_kv: int | None = None, scale: float | None = None,
                     causal: bool = False, backend: str = "auto") -> Tensor:
    """Attention over a batch of sequences of different lengths, packed without padding.

    q: [total_q, H, D]; k, v: [total_k, H, D]; offsets: [B + 1] int CSR offsets of q's rows
    (sequence b is rows offsets[b]:offsets[b + 1], flash-attention's cu_seqlens), kv_offsets the
    same for k and v (default: offsets). max_seqlen(_kv): the longest sequence, computed from the
    offsets (one device sync) when not given. A sequence without keys gives zeros.
    -> [total_q, H, D].
    """
    name = "attention_varlen"
    _check_tensors(name, q, k, v, 3, "[total, heads, head_dim]")
    kv_offsets = offsets if kv_offsets is None else kv_offsets
    if k.shape != v.shape:
        raise ValueError(f"{name}: k and v must have the same shape, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if q.shape[1:] != k.shape[1:]:
        raise ValueError(f"{name}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in heads "
                         f"and head_dim")
    for arg, off, rows in (("offsets", offsets, q.shape[0]), ("kv_offsets", kv_offsets,
                                                              k.shape[0])):
        if not isinstance(off, torch.Tensor) or off.dim() != 1 or off.numel() < 1 or \
                off.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{name}: {arg} must be a 1-D int32/int64 tensor [batch + 1]")
        if off.device != q.device:
            raise ValueError(f"{name}: {arg} is on {off.device} but q is on {q.device}")
        if off[0].item() != 0 or off[-1].item() != rows or bool((off.diff() < 0).any()):
            raise ValueError(f"{name}: {arg} must rise from 0 to {rows} (the packed rows)")
    if offsets.numel() != kv_offsets.numel():
        raise ValueError(f"{name}: offsets and kv_offsets must describe the same number of "
                         f"sequences, got {offsets.numel() - 1} and {kv_offsets.numel() - 1}")
    head_dim = int(q.shape[2])
    scale = _resolve_scale(name, scale, head_dim)
    chosen = BACKENDS.select(backend, q.device, (q.dtype,), (head_dim,))
    if max_seqlen is None:
        max_seqlen = int(offsets.diff().max().item()) if offsets.numel() > 1 else 0
    if max_seqlen_kv is None:
        max_seqlen_kv = int(kv_offsets.diff().max().item()) if kv_offsets.numel() > 1 else 0
    offsets = offsets.to(torch.int64).contiguous()
    kv_offsets = kv_offsets.to(torch.int64).contiguous()
    return _VARLEN_RUN[chosen.name](q, k, v, offsets, kv_offsets, max_seqlen, max_seqlen_kv,
                                    scale, bool(causal))


# --- the module ------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Multi-head attention with input and output projections (Vaswani et al. 2017).

    Self-attention (context=None) projects x with one fused `qkv` linear layer; with cross_dim
    set, queries come from x (`q`) and keys and values from the context (`kv`, cross_dim inputs).
    The backend is the run's (nerfx.ops.use_backend), as for attention(backend="auto").
    forward(x [B, N, dim], context [B, M, cross_dim] or None) -> [B, N, dim].
    """

    def __init__(self, dim: int, heads: int, *, qkv_bias: bool = True,
                 cross_dim: int | None = None, causal: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MultiHeadAttention: dim {dim} is not divisible by heads {heads}")
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.cross_dim = cross_dim
        self.causal = causal
        if cross_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(cross_dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """x: [B, N, dim], context: [B, M, cross_dim] (or [B, M, dim] for self-attention layers,
        or None: x attends to itself) -> [B, N, dim]."""
        b, n, _ = x.shape
        h, d = self.heads, self.head_dim
        if self.cross_dim is None and context is None:
            qkv = self.qkv(x).reshape(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D]
            q, k, v = qkv.unbind(0)
        else:
            if context is None:
                raise ValueError("MultiHeadAttention: a cross-attention layer needs a context")
            m = context.shape[1]
            if self.cross_dim is None:  # self-attention weights applied to another sequence
                wq, wkv = self.qkv.weight.split([self.dim, 2 * self.dim])
                bq, bkv = (None, None) if self.qkv.bias is None else \
                    self.qkv.bias.split([self.dim, 2 * self.dim])
                q, kv = F.linear(x, wq, bq), F.linear(context, wkv, bkv)
            else:
                q, kv = self.q(x), self.kv(context)
            q = q.reshape(b, n, h, d).transpose(1, 2)  # [B, H, N, D]
            k, v = kv.reshape(b, m, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, M, D]
        out = attention(q, k, v, causal=self.causal)  # [B, H, N, D]
        return self.proj(out.transpose(1, 2).reshape(b, n, self.dim))

    def extra_repr(self) -> str:
        cross = f", cross_dim={self.cross_dim}" if self.cross_dim is not None else ""
        return f"dim={self.dim}, heads={self.heads}{cross}"
