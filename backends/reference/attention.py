"""Reference MLA attention (SPEC §6): sparse and dense, prefill and decode.

Everything is float64. Conventions shared by every op here:

* ``lse`` is the natural-log log-sum-exp of the scaled logits
  ``q . k * sm_scale`` over the attended keys; ``max_logits`` is the largest
  of those scaled logits.
* A query row that attends no key gets ``out = 0``, ``lse = -inf`` and
  ``max_logits = -inf``; nothing is ever NaN unless an input is.
* Memory an op must not read never matters (SPEC §10): rows behind -1
  indices and positions at or past ``cache_seqlens`` are replaced by zeros
  before any arithmetic, so NaN or 0xFF bytes there cannot reach an output.
  NaN in a query or in a referenced row makes that output row NaN.
* Sparse ops treat every index entry as its own softmax term: an index that
  appears twice in a row contributes its key twice (weight doubled), exactly
  as a gather-then-softmax kernel does. Index -1 means "no key".
* The reference is exempt from the spec's output dtypes: outputs come back
  in float64.

FlashMLA differs in ways a backend wrapping it must undo: its current kernels
return lse = +inf (not -inf) for a row with no valid key, and its September
2025 sparse prefill returned lse and max_logits in base 2.
"""
from __future__ import annotations

import torch

from .mla_cache import unpack64
from ...core.fp8 import Fp8Format

NEG_INF = float("-inf")


def softmax_with_stats(logits: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Softmax over the last dim restricted to ``valid`` entries.

    Returns (weights, lse, max_logits). Rows with no valid entry get all-zero
    weights and -inf for lse and max; the max used for stability is replaced
    by 0 there so no ``-inf - -inf`` is ever formed. A NaN logit among the
    valid entries makes its whole row NaN (weights, lse and max): non-finite
    in, non-finite out (SPEC §10).
    """
    masked = logits.masked_fill(~valid, NEG_INF)
    if masked.shape[-1] == 0:
        peak = masked.new_full(masked.shape[:-1], NEG_INF)
    else:
        peak = masked.amax(dim=-1)
    shift = torch.where(peak == NEG_INF, torch.zeros_like(peak), peak)
    p = torch.exp(masked - shift.unsqueeze(-1))
    total = p.sum(dim=-1)
    lse = shift + torch.log(total)
    # only an empty row (total exactly 0) is zeroed: a NaN total (NaN in q or a referenced key) stays NaN
    weights = torch.where(total.unsqueeze(-1) == 0, torch.zeros_like(p), p / total.unsqueeze(-1))
    return weights, lse, peak


def _sparse_rows(q: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, sm_scale: float,
                 d_v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [N, H, D], gathered key rows [N, k, D] (invalid rows already zeroed), valid [N, k]."""
    logits = torch.einsum("nhd,nkd->nhk", q.double(), rows) * sm_scale
    weights, lse, peak = softmax_with_stats(logits, valid.unsqueeze(1))
    out = torch.einsum("nhk,nkd->nhd", weights, rows[..., :d_v])
    return out, lse, peak


def _gather(table: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``table`` at ``indices`` ([..., k], -1 = none); invalid slots read
    row 0 and are zeroed so a NaN there cannot leak into the output."""
    valid = indices >= 0
    rows = table[indices.clamp_min(0).long()]
    rows = torch.where(valid.unsqueeze(-1), rows, torch.zeros((), dtype=rows.dtype))
    return rows, valid


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """out[t, h] = sum_j softmax_j(q[t, h] . kv[i_tj] * sm_scale) * kv[i_tj, :d_v] over the
    valid entries i_tj = indices[t, 0, j] != -1; duplicate entries are separate
    terms. Returns (out [T, H, d_v], lse [T, H], max_logits [T, H])."""
    rows, valid = _gather(kv[:, 0].double(), indices[:, 0])
    return _sparse_rows(q, rows, valid, sm_scale, d_v)


def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                      d_v: int = 512, fmt: str | Fp8Format = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse attention over a paged cache; ``indices[b, s, j] = block * BS +
    offset`` (-1 = none). A uint8 cache holds 656-byte FP8 rows (dequantized
    exactly, see mla_cache), a float cache holds the latent rows themselves.
    Returns (out [B, SQ, H, d_v], lse [B, H, SQ])."""
    b, sq, h, dqk = q.shape
    flat = kv_cache.reshape(-1, kv_cache.shape[-1])
    if kv_cache.dtype == torch.uint8:
        # gather the bytes first, then dequantize only the rows that are read
        raw, valid = _gather(flat, indices.reshape(b * sq, indices.shape[-1]))
        rows = unpack64(raw, fmt, "sparse_mla_decode")
        rows = torch.where(valid.unsqueeze(-1), rows, torch.zeros((), dtype=rows.dtype))
    else:
        rows, valid = _gather(flat.double(), indices.reshape(b * sq, indices.shape[-1]))
    out, lse, _ = _sparse_rows(q.reshape(b * sq, h, dqk), rows, valid, sm_scale, d_v)
    return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).transpose(1, 2).contiguous()


def mla_prefill_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal MHA: query t sits at absolute position S - T + t and attends keys
    0 .. S - T + t. Returns (out [T, H, DV], lse [T, H])."""
    t, s = q.shape[0], k.shape[0]
    logits = torch.einsum("thd,shd->ths", q.double(), k.double()) * sm_scale
    pos_q = torch.arange(t).unsqueeze(1) + (s - t)
    valid = torch.arange(s).unsqueeze(0) <= pos_q  # [T, S]
    weights, lse, _ = softmax_with_stats(logits, valid.unsqueeze(1))
    return torch.einsum("ths,shd->thd", weights, v.double()), lse


def mla_decode_dense(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                     sm_scale: float, d_v: int = 512, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense absorbed-form decode over a paged float cache. Logical position p of
    batch b lives at kv_cache[block_table[b, p // BS], p % BS]; positions
    p < cache_seqlens[b] exist. With ``causal``, query i of SQ attends
    p < cache_seqlens[b] - SQ + 1 + i, else every existing p.
    Returns (out [B, SQ, H, d_v], lse [B, H, SQ])."""
    b, sq, h, dqk = q.shape
    nb, bs = kv_cache.shape[:2]
    mb = block_table.shape[1]
    pos = torch.arange(mb * bs)
    blocks = block_table.long()[:, pos // bs]  # [B, P]; -1 only past the sequence end (validated)
    exists = pos.unsqueeze(0) < cache_seqlens.long().unsqueeze(1)  # [B, P]
    rows = kv_cache[:, :, 0].double()[blocks.clamp_min(0), pos % bs]  # [B, P, DQK]
    rows = torch.where(exists.unsqueeze(-1), rows, torch.zeros((), dtype=rows.dtype))
    limit = cache_seqlens.long().view(b, 1, 1)
    if causal:
        limit = limit - sq + 1 + torch.arange(sq).view(1, sq, 1)
    valid = pos.view(1, 1, -1) < limit  # [B, SQ, P] (or [B, 1, P])
    logits = torch.einsum("bqhd,bpd->bqhp", q.double(), rows) * sm_scale
    weights, lse, _ = softmax_with_stats(logits, valid.unsqueeze(2))
    # a row a query does not attend (causal) never enters its product, not even times p = 0
    seen = torch.where(valid.unsqueeze(-1), rows[..., :d_v].unsqueeze(1), torch.zeros((), dtype=rows.dtype))
    out = torch.einsum("bqhp,bqpd->bqhd", weights, seen.expand(-1, sq, -1, -1))
    return out, lse.transpose(1, 2).contiguous()
