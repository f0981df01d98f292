"""Reference scaled dot-product attention, in PyTorch: softmax(Q Kᵀ · scale) V, written out.

The score matrix is materialised and the softmax is taken in float32 (float64 stays float64);
the output comes back in the inputs' dtype. `causal` masks key j for query i when j > i (aligned
at the top-left, as `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`), so with
query length != key length the first query always sees the first key.

Variable-length batches are packed along the sequence with CSR offsets, as nerfx's rays are:
sequence b owns rows offsets[b]:offsets[b + 1] (flash-attention's `cu_seqlens`).
"""

from __future__ import annotations

import math

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None,
              causal: bool = False) -> torch.Tensor:
    """q: [B, H, Lq, D], k: [B, H, Lk, D], v: [B, H, Lk, Dv] -> [B, H, Lq, Dv] in q's dtype."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    dtype = compute_dtype(q.dtype)
    with torch.autocast(q.device.type, enabled=False):  # fp32 even inside an autocast region
        scores = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale  # [B,H,Lq,Lk]
        if causal:
            lq, lk = q.shape[-2], k.shape[-2]
            keep = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril()  # [Lq, Lk]
            scores = scores.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [B, H, Lq, Lk]
        return torch.matmul(probs, v.to(dtype)).to(q.dtype)


def attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
                     kv_offsets: torch.Tensor | None = None, *, scale: float | None = None,
                     causal: bool = False) -> torch.Tensor:
    """Packed sequences, one attention call each.

    q: [total_q, H, D], k: [total_k, H, D], v: [total_k, H, Dv]; offsets: [B + 1] rows of q per
    sequence, kv_offsets: [B + 1] rows of k and v (default: offsets) -> [total_q, H, Dv].
    A sequence with no keys gets zeros.
    """
    kv_offsets = offsets if kv_offsets is None else kv_offsets
    qo, ko = offsets.tolist(), kv_offsets.tolist()
    pieces = []
    for b in range(len(qo) - 1):
        if ko[b + 1] == ko[b]:
            pieces.append(q.new_zeros(qo[b + 1] - qo[b], q.shape[1], v.shape[-1]))
            continue
        qb = q[qo[b]:qo[b + 1]].transpose(0, 1)[None]  # [1, H, Lq_b, D]
        kb = k[ko[b]:ko[b + 1]].transpose(0, 1)[None]  # [1, H, Lk_b, D]
        vb = v[ko[b]:ko[b + 1]].transpose(0, 1)[None]  # [1, H, Lk_b, Dv]
        ob = attention(qb, kb, vb, scale=scale, causal=causal)  # [1, H, Lq_b, Dv]
        pieces.append(ob[0].transpose(0, 1))  # [Lq_b, H, Dv]
    if not pieces:
        return q.new_zeros(0, q.shape[1], v.shape[-1])
    return torch.cat(pieces, dim=0)  # [total_q, H, Dv]
