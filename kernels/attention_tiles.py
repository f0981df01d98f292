"""The device functions of nerfx's Triton attention (kernels/attention.py): a program's
sequence and head, tiles of rows, the scaled scores, causal visibility, the saved row statistics.
Triton inlines each where it is called."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def batch_head(n_heads):
    """(batch, head) of this program: axis 1 runs over batch x head."""
    bh = tl.program_id(1)
    return bh // n_heads, (bh % n_heads).to(tl.int64)


@triton.jit
def sequence(offsets_ptr, b, fixed_len, VARLEN: tl.constexpr):
    """(first row, length) of sequence b: from the CSR offsets, or b and the fixed length."""
    if VARLEN:
        start = tl.load(offsets_ptr + b)
        length = (tl.load(offsets_ptr + b + 1) - start).to(tl.int32)
    else:
        start = b.to(tl.int64)
        length = fixed_len
    return start, length


@triton.jit
def program_rows(q_offsets, k_offsets, n_heads, len_q, len_k, VARLEN: tl.constexpr):
    """This program's head and its sequence's queries and keys, each as (first row, length)."""
    b, h = batch_head(n_heads)
    q_start, lq = sequence(q_offsets, b, len_q, VARLEN)
    k_start, lk = sequence(k_offsets, b, len_k, VARLEN)
    return h, q_start, lq, k_start, lk


@triton.jit
def tile_rows(start, BLOCK: tl.constexpr, length, d_ok):
    """Rows start .. start + BLOCK of a sequence of `length` rows, and the mask of their
    [BLOCK, Dp] tile."""
    rows = start + tl.arange(0, BLOCK)
    return rows, (rows[:, None] < length) & d_ok[None, :]


@triton.jit
def load_tile(base, rows, row_stride, dims, mask):
    """The [rows, Dp] tile at base (unit last stride), zeros where masked."""
    return tl.load(base + rows[:, None] * row_stride + dims[None, :], mask=mask, other=0.0)


@triton.jit
def store_tile(base, rows, row_stride, dims, value, mask):
    """Stores a [rows, Dp] tile at base (unit last stride) in base's dtype."""
    tl.store(base + rows[:, None] * row_stride + dims[None, :], value.to(base.dtype.element_ty),
             mask=mask)


@triton.jit
def dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # Triton's interpreter multiplies bf16 wrongly: it gets fp32 operands there.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def scores(a, b, qk_scale, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """a · bᵀ · scale · log2(e) in the accumulator dtype (qk_scale's): [M, N] for queries a and
    keys b, [N, M] the other way round."""
    return dot(a, tl.trans(b), UPCAST, PRECISION).to(qk_scale.dtype) * qk_scale


@triton.jit
def keys_end(start_m, lk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """End of the keys that queries start_m .. start_m + BLOCK_M see."""
    hi = lk
    if CAUSAL:
        hi = tl.minimum(lk, start_m + BLOCK_M)
    return hi


@triton.jit
def visible_keys(rows, cols, lk, CAUSAL: tl.constexpr):
    """[M, N]: which of the keys cols each of the queries rows sees."""
    visible = cols[None, :] < lk
    if CAUSAL:
        visible = visible & (cols[None, :] <= rows[:, None])
    return visible


@triton.jit
def row_stats(Lse, Delta, l_base, rows, lq):
    """The saved log-sum-exp and delta of these query rows; past the sequence lse = inf, so that
    their probabilities are 0."""
    ok = rows < lq
    return (tl.load(Lse + l_base + rows, mask=ok, other=float("inf")),
            tl.load(Delta + l_base + rows, mask=ok, other=0.0))
