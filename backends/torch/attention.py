"""MLA attention: sparse (DSA) prefill/decode and the dense variants.

The sparse paths gather only the KV rows the indices name, one query block
at a time: time and memory scale with T * k, independent of the context S.
Scores (q.k matmuls), softmax and lse are fp32; the P.V matmul operand dtype
comes from :mod:`policy` (fp32 on CPUs without bf16 matrix units)."""
from __future__ import annotations

import torch

from . import policy
from .mla_cache import WIDTH, unpack_rows
from ...core.fp8 import Fp8Format

NEG_INF = float("-inf")


def softmax_lse(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row softmax of fp32 scores (masked slots at -inf), in place of s where possible.

    Returns (p, lse, max, empty). lse comes from the softmax itself: at the row max p = 1 / sum, so
    lse = max - log(max p), exact to fp32 rounding (max p >= 1/L). This avoids a separate
    exp(s - max) pass, which on x86 CPUs crawls through denormals for scores far below the max.
    Rows with nothing valid (max = -inf) get p = 0, lse = -inf."""
    m = s.amax(-1)
    empty = torch.isneginf(m)
    if bool(empty.any()):
        s = s.masked_fill(empty.unsqueeze(-1), 0.0)
    p = torch.softmax(s, dim=-1)
    lse = m - p.amax(-1).log()
    if bool(empty.any()):
        p = p.masked_fill(empty.unsqueeze(-1), 0.0)
        lse = lse.masked_fill(empty, NEG_INF)
    return p, lse, m, empty


def attend(q: torch.Tensor, kv: torch.Tensor, valid: torch.Tensor, sm_scale: float, d_v: int,
           mdt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked softmax attention of n independent rows.

    q [n, H, D], kv [n, L, D] (value = kv[..., :d_v]), valid bool [n, L] or [n, Hq, L] broadcastable to the
    scores [n, H, L]. Returns (out fp32 [n, H, d_v], lse [n, H], max_logit [n, H]); a row with nothing valid
    gives out 0, lse -inf, max -inf.

    Rows of ``kv`` that are not valid must already be zeros: p = 0 times a NaN row is NaN (SPEC §10),
    so the callers zero what their indices, tables and lengths do not name (see :func:`named_rows`)."""
    kvm = kv.to(mdt)
    # The scores are fp32 matmuls whatever mdt is: a half-precision matmul returns half-precision scores,
    # a 2^-9 relative error on every logit that lse (judged absolutely, SPEC §10) cannot absorb at the
    # logits outlier heads reach. The scale rides on q ([n, H, D]) instead of a pass over [n, H, L].
    s = torch.matmul(q.float() * sm_scale, kv.float().transpose(1, 2))                  # [n, H, L]
    if not bool(valid.all()):  # prefill indices are usually all valid: skip the masking pass then
        s.masked_fill_(~(valid.unsqueeze(1) if valid.dim() == 2 else valid), NEG_INF)
    p, lse, m, _ = softmax_lse(s)
    out = torch.matmul(p.to(mdt), kvm[..., :d_v]).float()
    return out, lse, m


def named_rows(g: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Gathered rows [n, L, D] with the rows no index names ([n, L] False) replaced by zeros: unused
    cache slots may hold NaN or 0xFF bytes (FlashMLA's tests fill them so on purpose).

    In place: every caller passes a fresh gather it owns, and a copy of the block would cost as
    much as the gather itself."""
    return g if bool(valid.all()) else g.masked_fill_(~valid.unsqueeze(-1), 0.0)


def _step(h: int, k: int, d: int, mdt: torch.dtype, device: torch.device) -> int:
    # per query row: gathered rows (k x d, matmul dtype + fp32 source) and three fp32 [H, k] score tiles
    return policy.rows_per_block(k * d * (torch.empty((), dtype=mdt).element_size() + 4) + 3 * 4 * h * k, device)


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, h, d = q.shape
    s, k = kv.shape[0], indices.shape[-1]
    mdt = policy.matmul_dtype(q.device, q.dtype)
    out = torch.zeros((t, h, d_v), dtype=q.dtype, device=q.device)
    lse = torch.full((t, h), NEG_INF, dtype=torch.float32, device=q.device)
    mx = torch.full((t, h), NEG_INF, dtype=torch.float32, device=q.device)
    if t == 0 or s == 0 or k == 0:
        return out, lse, mx
    rows = kv[:, 0]
    if rows.dtype != mdt and t * k > s:
        # each row is gathered T*k/S times on average: widen the table once instead of every gathered copy
        rows = rows.to(mdt)
    idx = indices[:, 0]
    step = _step(h, k, d, mdt, q.device)
    for t0 in range(0, t, step):  # query blocks bound the gathered working set
        bi = idx[t0:t0 + step]
        valid = (bi >= 0) & (bi < s)
        g = rows.index_select(0, torch.where(valid, bi, 0).reshape(-1)).view(*bi.shape, d)   # only the named rows
        o, l, m = attend(q[t0:t0 + step], named_rows(g, valid), valid, sm_scale, d_v, mdt)
        out[t0:t0 + step], lse[t0:t0 + step], mx[t0:t0 + step] = o.to(q.dtype), l, m
    return out, lse, mx


def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                      d_v: int = 512, fmt: str | Fp8Format = "e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    b, sq, h, d = q.shape
    nb, bs, _, w = kv_cache.shape
    k = indices.shape[-1]
    n = b * sq
    mdt = policy.matmul_dtype(q.device, q.dtype)
    pool = kv_cache.reshape(nb * bs, w)
    qf, idx = q.reshape(n, h, d), indices.reshape(n, k)
    out = torch.zeros((n, h, d_v), dtype=q.dtype, device=q.device)
    lse = torch.full((n, h), NEG_INF, dtype=torch.float32, device=q.device)
    if n and k and nb * bs:
        fp8 = kv_cache.dtype == torch.uint8 and w == WIDTH
        step = _step(h, k, d, mdt, q.device)
        for r0 in range(0, n, step):
            bi = idx[r0:r0 + step]
            valid = (bi >= 0) & (bi < nb * bs)
            g = pool.index_select(0, torch.where(valid, bi, 0).reshape(-1)).view(*bi.shape, w)  # gather first ...
            g = unpack_rows(g, fmt) if fp8 else g                               # ... then dequantize only those rows
            o, l, _ = attend(qf[r0:r0 + step], named_rows(g, valid), valid, sm_scale, d_v, mdt)
            out[r0:r0 + step], lse[r0:r0 + step] = o.to(q.dtype), l
    return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).transpose(1, 2).contiguous()


def mla_prefill_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal MHA form; query t sits at absolute position S - T + t. Query
    blocks only touch the key prefix they can see."""
    t, h, d = q.shape
    s, dv = k.shape[0], v.shape[-1]
    mdt = policy.matmul_dtype(q.device, q.dtype)
    out = torch.zeros((t, h, dv), dtype=q.dtype, device=q.device)
    lse = torch.full((t, h), NEG_INF, dtype=torch.float32, device=q.device)
    if t == 0:
        return out, lse
    off = s - t
    kf, vh = k.transpose(0, 1).float(), v.transpose(0, 1).to(mdt)             # [H, S, D]
    step = policy.rows_per_block(3 * 4 * h * s, q.device)
    for t0 in range(0, t, step):
        t1 = min(t, t0 + step)
        end = off + t1                                                          # keys this block can see
        qb = (q[t0:t1].float() * sm_scale).transpose(0, 1)                          # [H, b, D], scale folded into q
        sc = torch.matmul(qb, kf[:, :end].transpose(1, 2))                            # fp32 scores: see attend()
        pos_q = torch.arange(off + t0, off + t1, device=q.device)
        sc.masked_fill_(torch.arange(end, device=q.device)[None, None, :] > pos_q[None, :, None], NEG_INF)
        p, l, _, _ = softmax_lse(sc)                                           # every query sees key 0: no empty row
        o = torch.matmul(p.to(mdt), vh[:, :end]).float()
        out[t0:t1] = o.transpose(0, 1).to(q.dtype)
        lse[t0:t1] = l.t()
    return out, lse


def mla_decode_dense(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                     sm_scale: float, d_v: int = 512, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense absorbed-form decode over the blocks each sequence owns."""
    b, sq, h, d = q.shape
    nb, bs = kv_cache.shape[:2]
    mb = block_table.shape[1]
    mdt = policy.matmul_dtype(q.device, q.dtype)
    out = torch.zeros((b, sq, h, d_v), dtype=q.dtype, device=q.device)
    lse = torch.full((b, h, sq), NEG_INF, dtype=torch.float32, device=q.device)
    if b == 0 or sq == 0 or mb == 0:
        return out, lse
    pos = torch.arange(mb * bs, device=q.device)
    # blocks of (sequences, query rows) bound the [b, q_rows * H, MB * BS] fp32 score tiles
    q_step = min(sq, policy.rows_per_block(3 * 4 * h * mb * bs, q.device))
    b_step = 1 if q_step < sq else policy.rows_per_block(mb * bs * (d * 4 + 3 * 4 * sq * h), q.device)
    for b0 in range(0, b, b_step):
        bt, sl = block_table[b0:b0 + b_step], cache_seqlens[b0:b0 + b_step]
        n = bt.shape[0]
        kv = kv_cache[bt.clamp(min=0).long()].reshape(n, mb * bs, d).to(mdt)       # widened once per sequence block
        live = (bt >= 0).repeat_interleave(bs, 1)[:, None, :]
        kv = named_rows(kv, live[:, 0] & (pos[None, :] < sl[:, None]))            # nothing past cache_seqlens enters
        for s0 in range(0, sq, q_step):
            s1 = min(sq, s0 + q_step)
            limit = sl[:, None].expand(n, s1 - s0)
            if causal:
                limit = limit - sq + 1 + torch.arange(s0, s1, device=q.device)[None, :]
            valid = (pos[None, None, :] < limit[:, :, None]) & live                    # [n, rows, L]
            qb = q[b0:b0 + n, s0:s1].reshape(n, (s1 - s0) * h, d)
            vmask = valid[:, :, None, :].expand(n, s1 - s0, h, mb * bs).reshape(n, (s1 - s0) * h, mb * bs)
            o, l, _ = attend(qb, kv, vmask, sm_scale, d_v, mdt)
            out[b0:b0 + n, s0:s1] = o.reshape(n, s1 - s0, h, d_v).to(q.dtype)
            lse[b0:b0 + n, :, s0:s1] = l.reshape(n, s1 - s0, h).transpose(1, 2)
    return out, lse
