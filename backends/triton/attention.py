"""Sparse MLA attention (SPEC §6, FlashMLA contracts): prefill over gathered
bf16 KV rows and decode over the paged cache, either bf16 or the 656-byte FP8
layout (512 e4m3 latent bytes in four 128-tiles, 4 fp32 tile scales, 64 bf16
rope values per token). One kernel serves all three.

Online softmax in base 2 with fp32 state; an index of -1 (or out of range)
contributes nothing; a row with no valid index gives out = 0, lse = -inf and
max_logits = -inf, never NaN. lse is the natural log of sum exp(s * sm_scale)
and max_logits the max of s * sm_scale (both in natural units).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import INTERPRETED, cast_out, fp8_to_f32, mma
from ...core.fp8 import fp8_format

CACHE_BYTES = 656  # per token: 512 fp8 latent, 4 fp32 tile scales (at 512), 64 bf16 rope values (at 528)
# 64 heads x BK gathered rows, 8 warps, no software pipelining: shared memory
# fits every target (sm_90a 227 KiB, gfx950 160 KiB, gfx942 64 KiB). BK is 32
# on NVIDIA and 16 on AMD, where 32 rows spilled 225 (prefill) and 655 (FP8
# decode) VGPRs on gfx942 against 8 and 207 with 16. See the build report.
TILE_H, WARPS, STAGES = 64, 8, 1


def tile_k(amd: bool) -> int:
    return 16 if amd else 32
TL_FP8 = {torch.float8_e4m3fn: tl.float8e4nv, torch.float8_e4m3fnuz: tl.float8e4b8}


@triton.jit
def sparse_mla_kernel(q_ptr, kv_ptr, idx_ptr, out_ptr, lse_ptr, mlog_ptr, H, K, NROWS, KV_STRIDE, sm_scale,
                      DV: tl.constexpr, DR: tl.constexpr, BDV: tl.constexpr, BDR: tl.constexpr,
                      BH: tl.constexpr, BK: tl.constexpr, FP8_CACHE: tl.constexpr, FP8_DT: tl.constexpr, Q_AS_B: tl.constexpr,
                      INTERP: tl.constexpr):
    # Program = one query row x BH heads; loop over its K selected rows in
    # chunks of BK. The latent part (DV dims) doubles as the value, so each
    # gathered row is loaded once for both products.
    r = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1) * BH + tl.arange(0, BH)
    hm = hs < H
    dv = tl.arange(0, BDV)
    dr = tl.arange(0, BDR)
    dvm = dv < DV
    drm = dr < DR
    DQK = DV + DR
    q_row = q_ptr + (r * H + hs[:, None]) * DQK
    q_lat = tl.load(q_row + dv[None, :], mask=hm[:, None] & dvm[None, :], other=0.0)
    q_pe = tl.load(q_row + DV + dr[None, :], mask=hm[:, None] & drm[None, :], other=0.0)
    qk_scale = sm_scale * 1.4426950408889634
    m = tl.full((BH,), float("-inf"), tl.float32)
    l = tl.zeros((BH,), tl.float32)
    acc = tl.zeros((BH, BDV), tl.float32)
    for k0 in range(0, K, BK):
        j = k0 + tl.arange(0, BK)
        idx = tl.load(idx_ptr + r * K + j, mask=j < K, other=-1)
        valid = (idx >= 0) & (idx < NROWS)
        row = tl.where(valid, idx, 0).to(tl.int64)
        lm = valid[:, None] & dvm[None, :]
        pm = valid[:, None] & drm[None, :]
        if FP8_CACHE:
            base = kv_ptr + row * 656
            raw = tl.load(base[:, None] + dv[None, :], mask=lm, other=0)
            scale = tl.load((base + 512).to(tl.pointer_type(tl.float32))[:, None] + dv[None, :] // 128, mask=lm, other=0.0)
            kv_lat = cast_out(fp8_to_f32(raw.to(FP8_DT, bitcast=True), INTERP) * scale, q_ptr.dtype.element_ty)
            # the cache keeps rope in bf16 whatever q is; the products take both operands in q's dtype
            kv_pe = tl.load((base + 528).to(tl.pointer_type(tl.bfloat16))[:, None] + dr[None, :], mask=pm,
                            other=0.0).to(q_ptr.dtype.element_ty)
        else:
            base = kv_ptr + row * KV_STRIDE
            kv_lat = tl.load(base[:, None] + dv[None, :], mask=lm, other=0.0)
            kv_pe = tl.load(base[:, None] + DV + dr[None, :], mask=pm, other=0.0)
        if Q_AS_B:
            # S^T = KV . Q^T: q becomes the B operand, which Hopper's wgmma reads
            # from shared memory, instead of a 64 x 576 register operand beside the
            # 64 x 512 fp32 accumulator (that version spilled 440 B on sm_90a).
            # Not for AMD (mfma operands are registers either way: it spills more)
            # nor for the FP8 cache (kv is dequantized in registers).
            s_t = mma(kv_lat, tl.trans(q_lat), INTERP)
            if DR > 0:
                s_t += mma(kv_pe, tl.trans(q_pe), INTERP)
            s = tl.trans(s_t)
        else:
            s = mma(q_lat, tl.trans(kv_lat), INTERP)
            if DR > 0:
                s += mma(q_pe, tl.trans(kv_pe), INTERP)
        s = tl.where(valid[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # all-invalid so far: keep exp2 finite
        alpha = tl.math.exp2(m - m_use)
        p = tl.math.exp2(s - m_use[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + mma(cast_out(p, kv_lat.dtype), kv_lat, INTERP)
        m = m_new
    # l is 0 exactly for a row with no valid key; a NaN score makes it NaN, and that row must come out
    # NaN (SPEC §10), not empty: `l > 0` is false for NaN
    has = l != 0.0
    o = acc / tl.where(has, l, 1.0)[:, None]
    tl.store(out_ptr + (r * H + hs[:, None]) * DV + dv[None, :], cast_out(o, out_ptr.dtype.element_ty),
             mask=hm[:, None] & dvm[None, :])
    lse = tl.where(has, m * 0.6931471805599453 + tl.log(tl.where(has, l, 1.0)), float("-inf"))
    tl.store(lse_ptr + r * H + hs, lse, mask=hm)
    # the running max may have dropped the NaN (maximum is fmaxf on the GPU); the sum has not
    tl.store(mlog_ptr + r * H + hs, tl.where(l != l, float("nan"), m * 0.6931471805599453), mask=hm)


def q_as_b(fp8_cache: bool, amd: bool) -> bool:
    """Orientation of the QK product: q as the (shared-memory) B operand on NVIDIA with a bf16 cache."""
    return not fp8_cache and not amd


def _pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(max(n, 1)))


def _launch(q: torch.Tensor, kv_rows: torch.Tensor, idx: torch.Tensor, sm_scale: float, d_v: int, nrows: int,
            fp8_cache, kv_stride: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r, h, dqk = q.shape
    kk = idx.shape[-1]
    out = torch.empty(r, h, d_v, dtype=q.dtype, device=q.device)
    lse = torch.empty(r, h, dtype=torch.float32, device=q.device)
    mlog = torch.empty(r, h, dtype=torch.float32, device=q.device)
    if r and h:
        bh = min(TILE_H, _pow2(h))
        sparse_mla_kernel[(r, triton.cdiv(h, bh))](
            q.contiguous(), kv_rows, idx.contiguous(), out, lse, mlog, h, kk, nrows, kv_stride, float(sm_scale),
            DV=d_v, DR=dqk - d_v, BDV=_pow2(d_v), BDR=_pow2(dqk - d_v), BH=bh, BK=min(tile_k(torch.version.hip is not None), _pow2(kk)),
            FP8_CACHE=fp8_cache is not None, FP8_DT=TL_FP8[fp8_cache.dtype] if fp8_cache is not None else tl.float8e4nv,
            Q_AS_B=q_as_b(fp8_cache is not None, amd=torch.version.hip is not None), INTERP=INTERPRETED,
            num_warps=WARPS, num_stages=STAGES)
    return out, lse, mlog


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = q.shape[0]
    kv_rows = kv.reshape(kv.shape[0], kv.shape[-1]).contiguous()
    if kv_rows.dtype != q.dtype:
        kv_rows = kv_rows.to(q.dtype)
    return _launch(q, kv_rows, indices.reshape(t, indices.shape[-1]), sm_scale, d_v, kv_rows.shape[0], None, kv_rows.shape[1])


def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float, d_v: int = 512,
                      fmt="e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    b, sq, h, dqk = q.shape
    nb, bs = kv_cache.shape[:2]
    rows = kv_cache.reshape(nb * bs, kv_cache.shape[-1]).contiguous()
    fp8 = fp8_format(fmt, "sparse_mla_decode") if kv_cache.dtype == torch.uint8 else None
    if fp8 is None and rows.dtype != q.dtype:
        rows = rows.to(q.dtype)
    out, lse, _ = _launch(q.reshape(b * sq, h, dqk), rows, indices.reshape(b * sq, indices.shape[-1]), sm_scale, d_v, nb * bs,
                          fp8, rows.shape[1])
    return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).transpose(1, 2).contiguous()
