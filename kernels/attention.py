"""Fused attention in Triton, FlashAttention-2 style (Dao 2023), forward and backward.

Forward: one program per (block of queries, batch x head); it walks the keys in blocks with an
online softmax in base 2 (scores pre-multiplied by scale·log2 e, so exp2 replaces exp), never
materialising the score matrix, and saves the log-sum-exp (base 2) of each query's row.
Backward: a pre-pass delta_i = sum_d O_id dO_id; a dK/dV pass (one program per key block, looping
over the query blocks that see it) and a dQ pass (one program per query block, looping over keys),
two specialisations of one kernel; the probabilities are recomputed from the saved log-sum-exp.
No atomics: every output element is written by one program, so the passes are deterministic.

Precision: fp16/bf16 inputs multiply in their dtype with fp32 accumulation (softmax statistics,
accumulators and gradients in fp32); fp32 inputs multiply in IEEE fp32, or TF32 when torch allows
it (torch.get_float32_matmul_precision() != "highest"), as torch.matmul does; fp64 in fp64.
Any sequence length (masked in the kernel); head dims up to 128, padded to a power of two in
registers only. Dense tensors may have any strides with a unit last stride; packed (varlen)
sequences follow CSR offsets. Causal masking is top-left aligned (key j visible to query i when
j <= i). A query without visible keys gives zeros.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from nerfx.kernels.attention_tiles import (
    batch_head,
    dot,
    keys_end,
    load_tile,
    program_rows,
    row_stats,
    scores,
    sequence,
    store_tile,
    tile_rows,
    visible_keys,
)

LOG2E = 1.4426950408889634
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


# --- forward ------------------------------------------------------------------------------

@triton.jit
def _forward_kernel(Q, K, V, Out, Lse, Scales, q_offsets, k_offsets,
                    sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sob, soh, sos, slb, slh,
                    n_heads, len_q, len_k, LQ_KEY, LK_KEY,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                    VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    start_m = tl.program_id(0) * BLOCK_M
    h, q_start, lq, k_start, lk = program_rows(q_offsets, k_offsets, n_heads, len_q, len_k, VARLEN)
    if start_m >= lq:
        return
    qk_scale = tl.load(Scales)  # scale * log2(e), in the accumulator dtype
    acc_dtype = qk_scale.dtype
    dims = tl.arange(0, BLOCK_D)  # [Dp]
    d_ok = dims < HEAD_DIM
    rows, q_ok = tile_rows(start_m, BLOCK_M, lq, d_ok)  # [M]
    q = load_tile(Q + q_start * sqb + h * sqh, rows, sqs, dims, q_ok)  # [M, Dp]
    k_base = K + k_start * skb + h * skh
    v_base = V + k_start * svb + h * svh
    m_i = tl.full([BLOCK_M], -1.0e30, acc_dtype)  # running max (finite: empty rows stay NaN-free)
    l_i = tl.zeros([BLOCK_M], acc_dtype)  # running sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], acc_dtype)
    for start_n in range(0, keys_end(start_m, lk, CAUSAL, BLOCK_M), BLOCK_N):
        cols, kv_ok = tile_rows(start_n, BLOCK_N, lk, d_ok)  # [N]
        k = load_tile(k_base, cols, sks, dims, kv_ok)
        s = tl.where(visible_keys(rows, cols, lk, CAUSAL),
                     scores(q, k, qk_scale, UPCAST, PRECISION), float("-inf"))  # [M, N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])  # [M, N]
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_tile(v_base, cols, svs, dims, kv_ok)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, UPCAST, PRECISION).to(acc_dtype)
        m_i = m_new
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))  # inf: zero probabilities in bwd
    store_tile(Out + q_start * sob + h * soh, rows, sos, dims, acc / l_safe[:, None], q_ok)
    tl.store(Lse + q_start * slb + h * slh + rows, lse, mask=rows < lq)


# --- backward -----------------------------------------------------------------------------

@triton.jit
def _delta_kernel(Out, dOut, Delta, q_offsets, sob, soh, sos, sgb, sgh, sgs, slb, slh, n_heads,
                  len_q, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """delta_i = sum_d O_id dO_id, one value per query row, in Delta's (the lse's) layout."""
    start_m = tl.program_id(0) * BLOCK_M
    b, h = batch_head(n_heads)
    q_start, lq = sequence(q_offsets, b, len_q, VARLEN)
    if start_m >= lq:
        return
    dims = tl.arange(0, BLOCK_D)
    rows, ok = tile_rows(start_m, BLOCK_M, lq, dims < HEAD_DIM)
    acc_dtype = Delta.dtype.element_ty
    o = load_tile(Out + q_start * sob + h * soh, rows, sos, dims, ok).to(acc_dtype)
    do = load_tile(dOut + q_start * sgb + h * sgh, rows, sgs, dims, ok).to(acc_dtype)
    tl.store(Delta + q_start * slb + h * slh + rows, tl.sum(o * do, 1), mask=rows < lq)


@triton.jit
def _backward_kernel(Q, K, V, dOut, Lse, Delta, dQ, dK, dV, Scales, q_offsets, k_offsets,
                     sqb, sqh, sqs, skb, skh, sks, svb, svh, svs, sgb, sgh, sgs, slb, slh,
                     sdqb, sdqh, sdqs, sdkb, sdkh, sdks, sdvb, sdvh, sdvs,
                     n_heads, len_q, len_k, LQ_KEY, LK_KEY, KEYS: tl.constexpr,
                     HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                     VARLEN: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The two passes of the backward, one program per block of keys (KEYS) or of queries.

    KEYS, the dK/dV pass: dV = sum_i P_ij dO_i, dK = scale * sum_i dS_ij Q_i over the queries
    that see the block's keys. Otherwise the dQ pass: dQ = scale * sum_j dS_ij K_j over the keys
    that the block's queries see. Each pass writes only its own gradients.
    """
    h, q_start, lq, k_start, lk = program_rows(q_offsets, k_offsets, n_heads, len_q, len_k, VARLEN)
    if KEYS:
        start_n = tl.program_id(0) * BLOCK_N
        if start_n >= lk:
            return
    else:
        start_m = tl.program_id(0) * BLOCK_M
        if start_m >= lq:
            return
    qk_scale = tl.load(Scales)
    scale = tl.load(Scales + 1)
    acc_dtype = qk_scale.dtype
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < HEAD_DIM
    q_base = Q + q_start * sqb + h * sqh
    g_base = dOut + q_start * sgb + h * sgh
    l_base = q_start * slb + h * slh
    k_base = K + k_start * skb + h * skh
    v_base = V + k_start * svb + h * svh
    if KEYS:
        cols, kv_ok = tile_rows(start_n, BLOCK_N, lk, d_ok)  # [N] keys of this program
        k = load_tile(k_base, cols, sks, dims, kv_ok)  # [N, Dp]
        v = load_tile(v_base, cols, svs, dims, kv_ok)  # [N, Dp]
        dk = tl.zeros([BLOCK_N, BLOCK_D], acc_dtype)
        dv = tl.zeros([BLOCK_N, BLOCK_D], acc_dtype)
        lo = 0
        if CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M  # earlier queries see none of these keys
        for start_m in range(lo, lq, BLOCK_M):
            rows, q_ok = tile_rows(start_m, BLOCK_M, lq, d_ok)
            q = load_tile(q_base, rows, sqs, dims, q_ok)
            do = load_tile(g_base, rows, sgs, dims, q_ok)
            lse, delta = row_stats(Lse, Delta, l_base, rows, lq)  # [M]
            p_t = tl.exp2(scores(k, q, qk_scale, UPCAST, PRECISION) - lse[None, :])  # [N, M]
            if CAUSAL:
                p_t = tl.where(cols[:, None] <= rows[None, :], p_t, 0.0)
            dv += dot(p_t.to(do.dtype), do, UPCAST, PRECISION).to(acc_dtype)
            dp_t = dot(v, tl.trans(do), UPCAST, PRECISION).to(acc_dtype)  # [N, M]
            ds_t = p_t * (dp_t - delta[None, :])
            dk += dot(ds_t.to(q.dtype), q, UPCAST, PRECISION).to(acc_dtype)
        store_tile(dK + k_start * sdkb + h * sdkh, cols, sdks, dims, dk * scale, kv_ok)
        store_tile(dV + k_start * sdvb + h * sdvh, cols, sdvs, dims, dv, kv_ok)
    else:
        rows, q_ok = tile_rows(start_m, BLOCK_M, lq, d_ok)  # [M] queries of this program
        q = load_tile(q_base, rows, sqs, dims, q_ok)  # [M, Dp]
        do = load_tile(g_base, rows, sgs, dims, q_ok)  # [M, Dp]
        lse, delta = row_stats(Lse, Delta, l_base, rows, lq)  # [M]
        dq = tl.zeros([BLOCK_M, BLOCK_D], acc_dtype)
        for start_n in range(0, keys_end(start_m, lk, CAUSAL, BLOCK_M), BLOCK_N):
            cols, kv_ok = tile_rows(start_n, BLOCK_N, lk, d_ok)
            k = load_tile(k_base, cols, sks, dims, kv_ok)
            v = load_tile(v_base, cols, svs, dims, kv_ok)
            p = tl.exp2(scores(q, k, qk_scale, UPCAST, PRECISION) - lse[:, None])  # [M, N]
            p = tl.where(visible_keys(rows, cols, lk, CAUSAL), p, 0.0)
            dp = dot(do, tl.trans(v), UPCAST, PRECISION).to(acc_dtype)  # [M, N]
            ds = p * (dp - delta[:, None])
            dq += dot(ds.to(k.dtype), k, UPCAST, PRECISION).to(acc_dtype)
        store_tile(dQ + q_start * sdqb + h * sdqh, rows, sdqs, dims, dq * scale, q_ok)


# --- launch configuration ----------------------------------------------------------------------

def _configs(kind: str, head_dim_pad: int) -> list[triton.Config]:
    """Candidate blocks for autotuning on a GPU (NERFX_ATTENTION_AUTOTUNE=1), once per head dim,
    causality and power-of-two length bucket. Starting points from the Triton fused-attention
    tutorial and flash-attention's Triton port."""
    if kind == "fwd":
        shapes = [(128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3),
                  (64, 32, 4, 4)]
    elif kind == "dkdv":  # BLOCK_M queries looped over, BLOCK_N keys owned
        shapes = [(32, 128, 4, 3), (64, 64, 4, 3), (64, 128, 8, 3), (32, 64, 4, 4)]
    else:  # dq: BLOCK_M queries owned, BLOCK_N keys looped over
        shapes = [(128, 32, 4, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 32, 4, 4)]
    if head_dim_pad > 64:  # large tiles of a 128-wide head spill registers
        shapes = [s for s in shapes if s[0] * s[1] <= 128 * 64]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
            for m, n, w, st in shapes]


def _default_blocks(kind: str, head_dim_pad: int, element_size: int,
                    capability: tuple[int, int]) -> dict:
    """Fixed blocks per kernel, head dim and GPU generation (one compile per variant).

    Hopper/Ampere, 2-byte inputs: the tutorial's tiles (forward 128x64; dK/dV owns 128 keys and
    walks 32 queries; dQ owns 128 queries and walks 32 keys), halved for a 128-wide head.
    fp32/fp64 and pre-Ampere GPUs get smaller tiles and fewer stages (registers, shared memory).
    Not yet tuned on a GPU: NERFX_ATTENTION_AUTOTUNE=1 with TRITON_PRINT_AUTOTUNING=1 shows
    what the candidates in _configs would pick.
    """
    wide = head_dim_pad > 64
    if element_size == 8:  # fp64 (tests): shared memory of a 128-wide dK/dV pass ~160 KB
        m, n, warps, stages = 32, 32, 4, 1
    elif element_size == 4 or capability[0] < 8:
        m, n = {"fwd": (64, 32), "dkdv": (32, 64), "dq": (64, 32)}[kind]
        warps, stages = 4, 1 if wide else 2
    elif kind == "fwd":
        m, n, warps, stages = 128, 64, 8 if wide else 4, 3
    elif kind == "dkdv":
        m, n, warps, stages = 32, 64 if wide else 128, 4, 3
    else:
        m, n, warps, stages = 64 if wide else 128, 32, 4, 3
    return {"BLOCK_M": m, "BLOCK_N": n, "num_warps": warps, "num_stages": stages}


# The interpreter runs one program at a time (~1 ms each): big blocks, no autotuning there.
INTERPRETER_BLOCKS = {"BLOCK_M": 64, "BLOCK_N": 64}
AUTOTUNE_VAR = "NERFX_ATTENTION_AUTOTUNE"  # "1": autotune the blocks on a GPU (slow first call)
_KEY = ["HEAD_DIM", "CAUSAL", "LQ_KEY", "LK_KEY"]
_tuned: dict[str, object] = {}


def _kernel(kind: str, q: torch.Tensor, head_dim_pad: int):
    """The kernel to launch and its meta-parameters (none when autotuned)."""
    raw = _forward_kernel if kind == "fwd" else _backward_kernel
    if q.device.type != "cuda":
        return raw, dict(INTERPRETER_BLOCKS)
    if os.environ.get(AUTOTUNE_VAR) != "1":
        capability = torch.cuda.get_device_capability(q.device)
        return raw, _default_blocks(kind, head_dim_pad, q.element_size(), capability)
    name = f"{kind}-{head_dim_pad}"
    if name not in _tuned:
        _tuned[name] = triton.autotune(_configs(kind, head_dim_pad), key=_KEY)(raw)
    return _tuned[name], {}


def _grid(length: int, block: str, n_batch_heads: int):
    """The launch grid: blocks of meta[block] rows over `length` rows, times batch x head."""
    return lambda meta: (triton.cdiv(length, meta[block]), n_batch_heads)


def _length_key(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 16))


def _dot_settings(dtype: torch.dtype, device: torch.device) -> dict:
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        precision = "tf32"
    else:
        precision = "ieee"
    upcast = device.type != "cuda" and dtype == torch.bfloat16
    return {"UPCAST": upcast, "PRECISION": precision}


def _scales(scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.tensor([scale * LOG2E, scale], dtype=acc, device=device)


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(per-sequence, per-head, per-row) strides: dense [B, H, L, D]; packed [total, H, D]."""
    if varlen:
        return t.stride(0), t.stride(1), t.stride(0)
    return t.stride(0), t.stride(1), t.stride(2)


def _lse_strides(lse: torch.Tensor, varlen: bool) -> tuple[int, int]:
    # Dense lse [B, H, Lq]: (per-sequence, per-head); packed [H, total_q]: the sequence's first
    # row is added as an offset, so its "per-sequence" stride is 1.
    return (1, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def empty_out(q: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """The output buffer: dense [B, H, Lq, D] stored as [B, Lq, H, D], so that merging the heads
    ([B, Lq, H * D]) is free; packed like q."""
    if offsets is not None:
        return torch.empty_like(q, memory_format=torch.contiguous_format)
    b, h, lq, d = q.shape
    return q.new_empty(b, lq, h, d).transpose(1, 2)


def _geometry(q, k, offsets, max_q, max_k):
    varlen = offsets is not None
    if varlen:
        n_batch, n_heads, head_dim = offsets.numel() - 1, q.shape[1], q.shape[2]
    else:
        n_batch, n_heads, head_dim = q.shape[0], q.shape[1], q.shape[3]
    return varlen, n_batch, n_heads, head_dim, triton.next_power_of_2(head_dim)


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor | None,
            kv_offsets: torch.Tensor | None, max_q: int, max_k: int, scale: float,
            causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q: [B, H, Lq, D] (or packed [total_q, H, D] with offsets [B + 1]), k, v likewise
    -> (out like q, lse: base-2 log-sum-exp of scale·log2(e)·q·k [B, H, Lq] or [H, total_q])."""
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    varlen, n_batch, n_heads, head_dim, block_d = _geometry(q, k, offsets, max_q, max_k)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    out = empty_out(q, offsets)
    lse_shape = (n_heads, q.shape[0]) if varlen else tuple(q.shape[:3])
    lse = torch.empty(lse_shape, dtype=acc, device=q.device)
    if q.numel() == 0 or max_q == 0 or n_batch == 0:
        return out.zero_(), lse.fill_(float("inf"))
    if k.numel() == 0 or max_k == 0:
        return out.zero_(), lse.fill_(float("inf"))
    offsets_q = offsets if varlen else lse  # unused pointer when dense
    offsets_k = kv_offsets if varlen else lse
    kernel, meta = _kernel("fwd", q, block_d)
    kernel[_grid(max_q, "BLOCK_M", n_batch * n_heads)](
        q, k, v, out, lse, _scales(scale, q.dtype, q.device), offsets_q, offsets_k,
        *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(out, varlen),
        *_lse_strides(lse, varlen), n_heads, max_q, max_k, _length_key(max_q), _length_key(max_k),
        HEAD_DIM=head_dim, BLOCK_D=block_d, CAUSAL=causal, VARLEN=varlen,
        **_dot_settings(q.dtype, q.device), **meta)
    return out, lse


def backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
             out: torch.Tensor, lse: torch.Tensor, offsets: torch.Tensor | None,
             kv_offsets: torch.Tensor | None, max_q: int, max_k: int, scale: float,
             causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (dq like q, dk like k, dv like v), accumulated in fp32 (fp64 for fp64 inputs)."""
    q, k, v, out = _unit_last(q), _unit_last(k), _unit_last(v), _unit_last(out)
    grad_out = _unit_last(grad_out)
    varlen, n_batch, n_heads, head_dim, block_d = _geometry(q, k, offsets, max_q, max_k)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0 or n_batch == 0 or max_q == 0 or max_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    if varlen:  # keys of sequences that no program visits (no queries) still need zeros
        dk.zero_()
        dv.zero_()
    delta = torch.empty_like(lse)
    offsets_q = offsets if varlen else lse
    offsets_k = kv_offsets if varlen else lse
    scales = _scales(scale, q.dtype, q.device)
    dots = _dot_settings(q.dtype, q.device)
    common = dict(HEAD_DIM=head_dim, BLOCK_D=block_d, VARLEN=varlen)
    keys = (_length_key(max_q), _length_key(max_k))
    q_st, k_st, v_st = _strides(q, varlen), _strides(k, varlen), _strides(v, varlen)
    g_st, l_st = _strides(grad_out, varlen), _lse_strides(lse, varlen)

    delta_block = 64
    _delta_kernel[(triton.cdiv(max_q, delta_block), n_batch * n_heads)](
        out, grad_out, delta, offsets_q, *_strides(out, varlen), *g_st, *l_st, n_heads, max_q,
        BLOCK_M=delta_block, **common)

    args = (q, k, v, grad_out, lse, delta, dq, dk, dv, scales, offsets_q, offsets_k, *q_st, *k_st,
            *v_st, *g_st, *l_st, *_strides(dq, varlen), *_strides(dk, varlen),
            *_strides(dv, varlen), n_heads, max_q, max_k, *keys)
    for kind, length, block in (("dkdv", max_k, "BLOCK_N"), ("dq", max_q, "BLOCK_M")):
        kernel, meta = _kernel(kind, q, block_d)
        kernel[_grid(length, block, n_batch * n_heads)](
            *args, KEYS=kind == "dkdv", CAUSAL=causal, **common, **dots, **meta)
    return dq, dk, dv


__all__ = ["backward", "empty_out", "forward"]
