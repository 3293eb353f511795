"""MoE grouped GEMM over the contiguous layout (SPEC §7, DeepGEMM
m_grouped_*_contiguous): rows sorted by expert, each expert's segment padded
to a multiple of 128, padding rows marked -1 and producing 0.

``moe_experts`` is built from it: the gate and up projections run as one
grouped GEMM with SwiGLU fused into the epilogue (both products share the
A tile, and the [M, 2I] intermediate is never written), then the down
projection as a second grouped GEMM. Routing (sorting token copies by
expert, padding) and the weighted scatter-add back to tokens are index
operations done in PyTorch around the kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import INTERPRETED, cast_out, mma
from ...core.errors import ValidationError

SEGMENT = 128  # contiguous-layout alignment of every expert segment


@triton.jit
def grouped_gemm_kernel(a_ptr, b_ptr, b3_ptr, ids_ptr, c_ptr, N, K,
                        SWIGLU: tl.constexpr, INTERP: tl.constexpr,
                        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    # BM divides the 128-row segment alignment, so one M-tile belongs to one
    # group: its id is the max over the tile (padding rows are -1).
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    ids = tl.load(ids_ptr + rm)
    g = tl.max(ids, axis=0)
    nm = rn < N
    acc = tl.zeros((BM, BN), tl.float32)
    acc3 = tl.zeros((BM, BN), tl.float32)
    if g >= 0:
        b_off = g.to(tl.int64) * N * K
        for k0 in range(0, K, BK):
            km = (k0 + rk) < K
            a = tl.load(a_ptr + rm[:, None].to(tl.int64) * K + (k0 + rk)[None, :], mask=(ids >= 0)[:, None] & km[None, :], other=0.0)
            boffs = b_off + rn[:, None].to(tl.int64) * K + (k0 + rk)[None, :]
            bm = nm[:, None] & km[None, :]
            acc += mma(a, tl.trans(tl.load(b_ptr + boffs, mask=bm, other=0.0)), INTERP)
            if SWIGLU:
                acc3 += mma(a, tl.trans(tl.load(b3_ptr + boffs, mask=bm, other=0.0)), INTERP)
    if SWIGLU:
        acc = acc / (1.0 + tl.exp(-acc)) * acc3  # silu(a w1) * (a w3) in fp32
    acc = tl.where((ids >= 0)[:, None], acc, 0.0)
    tl.store(c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :], cast_out(acc, c_ptr.dtype.element_ty), mask=nm[None, :])


TILE = {"BM": 64, "BN": 128, "BK": 64}
# Software-pipelining depth: the SwiGLU kernel streams two B tiles per step, and
# three stages of them overflow gfx942's 64 KiB LDS; two fit every target.
STAGES = {True: 2, False: 3}


def _check_segments(m_indices: torch.Tensor) -> None:
    blocks = m_indices.view(-1, SEGMENT).long()
    hi = blocks.max(dim=1).values
    lo = torch.where(blocks >= 0, blocks, hi[:, None]).min(dim=1).values
    bad = (lo != hi).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValidationError("moe_grouped_gemm_contiguous", "m_indices",
                              f"one group per {SEGMENT}-row block (each segment padded to a multiple of {SEGMENT})",
                              f"block {i} (rows {i * SEGMENT}..{(i + 1) * SEGMENT - 1}) holds groups {sorted(set(blocks[i].tolist()) - {-1})}")


def _grouped(a: torch.Tensor, b: torch.Tensor, m_indices: torch.Tensor, out_dtype: torch.dtype,
             b3: torch.Tensor | None = None) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    if m and n:
        if b.dtype != a.dtype:
            b = b.to(a.dtype)
            b3 = b3.to(a.dtype) if b3 is not None else None
        t = TILE
        grouped_gemm_kernel[(m // t["BM"], triton.cdiv(n, t["BN"]))](
            a.contiguous(), b.contiguous(), (b3 if b3 is not None else b).contiguous(), m_indices.contiguous(), c, n, k,
            SWIGLU=b3 is not None, INTERP=INTERPRETED, **t, num_warps=4, num_stages=STAGES[b3 is not None])
    return c


def moe_grouped_gemm_contiguous(a: torch.Tensor, b: torch.Tensor, m_indices: torch.Tensor) -> torch.Tensor:
    _check_segments(m_indices)
    return _grouped(a, b, m_indices, a.dtype)


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
    t, d = x.shape
    e = w1.shape[0]
    tok, slot = (ids >= 0).nonzero(as_tuple=True)
    expert = ids[tok, slot].long()
    order = torch.argsort(expert, stable=True)
    tok, slot, expert = tok[order], slot[order], expert[order]
    counts = torch.bincount(expert, minlength=e)
    padded = (counts + SEGMENT - 1) // SEGMENT * SEGMENT
    seg_start = torch.cumsum(padded, 0) - padded
    rank_in_seg = torch.arange(expert.numel(), device=x.device) - (torch.cumsum(counts, 0) - counts)[expert]
    row = seg_start[expert] + rank_in_seg
    m = int(padded.sum())
    y = torch.zeros(t, d, dtype=torch.float32, device=x.device)
    if m == 0:
        return y.to(x.dtype)
    a = torch.zeros(m, d, dtype=x.dtype, device=x.device)
    a[row] = x[tok]
    m_indices = torch.full((m,), -1, dtype=torch.int32, device=x.device)
    m_indices[row] = expert.to(torch.int32)
    h = _grouped(a, w1, m_indices, x.dtype, b3=w3)       # [M, I] = silu(a w1^T) * (a w3^T)
    out = _grouped(h, w2, m_indices, torch.float32)      # [M, D] in fp32 for the weighted sum
    y.index_add_(0, tok, out[row] * weights[tok, slot].float()[:, None])
    return y.to(x.dtype)
