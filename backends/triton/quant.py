"""FP8 quantization kernels: act_quant and the block-scaled fp8_gemm (SPEC §2).

One source serves NVIDIA and AMD: the FP8 element type comes from the output
pointer (e4m3fn -> fp8e4nv on sm_90a/gfx950, e4m3fnuz -> fp8e4b8 on gfx942),
and the format's max is a compile-time constant, never hard-coded.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import INTERPRETED, cast_out, mma, round_fp8
from ...core.fp8 import Fp8Format, ScaleFormat, fp8_format, scale_format


@triton.jit
def act_quant_kernel(x_ptr, y_ptr, s_ptr, R, N,
                     FMAX: tl.constexpr, MIN_NORMAL: tl.constexpr, UE8M0: tl.constexpr, BLOCK: tl.constexpr, BR: tl.constexpr,
                     NAN_CODE: tl.constexpr):
    # One program quantizes BR rows of one BLOCK-wide group; scale math is fp32 by contract.
    pid_r = tl.program_id(0)
    g = tl.program_id(1)
    rows = pid_r * BR + tl.arange(0, BR)
    cols = g * BLOCK + tl.arange(0, BLOCK)
    rmask = rows < R
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    x = tl.load(x_ptr + offs, mask=rmask[:, None], other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-4)
    # max/maximum/minimum may drop NaN (fmaxf semantics): a group holding NaN gets a NaN scale and NaN
    # codes, an inf group an inf scale (SPEC §10, non-finite in, non-finite out), never a finite stand-in
    has_nan = tl.max((x != x).to(tl.int32), axis=1) > 0
    amax = tl.where(has_nan, float("nan"), amax)
    s = tl.math.div_rn(amax, FMAX)
    if UE8M0:
        # 2**ceil(log2(s)) from the bits: exact, unlike exp2(ceil(log2(s))) on device; inf/NaN kept.
        bits = s.to(tl.int32, bitcast=True)
        e = (bits >> 23) & 0xFF
        e = e + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        s = tl.where(((bits >> 23) & 0xFF) == 0xFF, s, (e << 23).to(tl.float32, bitcast=True))
    q = tl.math.div_rn(x, s[:, None])
    q = round_fp8(tl.where(q != q, q, tl.minimum(tl.maximum(q, -FMAX), FMAX)), MIN_NORMAL)
    # NaN gets the format's NaN code explicitly: the interpreter's fp32 -> fp8 conversion turns NaN into a
    # finite code (the hardware cvt keeps it), and e4m3fnuz has one NaN, 0x80
    nan8 = tl.full(q.shape, NAN_CODE, tl.uint8).to(y_ptr.dtype.element_ty, bitcast=True)
    tl.store(y_ptr + offs, tl.where(q != q, nan8, q.to(y_ptr.dtype.element_ty)), mask=rmask[:, None])
    tl.store(s_ptr + rows.to(tl.int64) * (N // BLOCK) + g, s, mask=rmask)


def nan_code(f: Fp8Format) -> int:
    """The format's NaN byte: 0x80 is e4m3fnuz's only NaN, 0x7F one of e4m3fn's two."""
    return 0x80 if f.dtype == torch.float8_e4m3fnuz else 0x7F


def min_normal(f: Fp8Format) -> float:
    return float(torch.finfo(f.dtype).smallest_normal)


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    f, sf = fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant")
    n = x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    r = x2.shape[0]
    y = torch.empty(x2.shape, dtype=f.dtype, device=x.device)
    s = torch.empty(r, n // block, dtype=torch.float32, device=x.device)
    if r and n:
        br = 16
        act_quant_kernel[(triton.cdiv(r, br), n // block)](
            x2, y, s, r, n, FMAX=f.max, MIN_NORMAL=min_normal(f), UE8M0=sf.name == "ue8m0", BLOCK=block, BR=br,
            NAN_CODE=nan_code(f))
    return y.reshape(x.shape), s.reshape(*x.shape[:-1], n // block)


@triton.jit
def fp8_gemm_kernel(a_ptr, sa_ptr, b_ptr, sb_ptr, c_ptr, M, N, K,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, INTERP: tl.constexpr):
    # BK == 128 == the scale block: each K-block's partial sum is promoted to
    # fp32 and scaled once (DeepGEMM's promotion scheme), then accumulated.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    mmask = rm < M
    nmask = rn < N
    kb_n = K // BK
    a_ptrs = a_ptr + rm[:, None].to(tl.int64) * K + rk[None, :]
    b_ptrs = b_ptr + rn[:, None].to(tl.int64) * K + rk[None, :]
    sa_ptrs = sa_ptr + rm.to(tl.int64) * kb_n
    sb_ptrs = sb_ptr + (rn // 128).to(tl.int64) * kb_n
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, kb_n):
        a = tl.load(a_ptrs, mask=mmask[:, None], other=0.0)
        b = tl.load(b_ptrs, mask=nmask[:, None], other=0.0)
        sa = tl.load(sa_ptrs + kb, mask=mmask, other=0.0)
        sb = tl.load(sb_ptrs + kb, mask=nmask, other=0.0)
        part = mma(a, tl.trans(b), INTERP)
        acc += part * sa[:, None] * sb[None, :]
        a_ptrs += BK
        b_ptrs += BK
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
    tl.store(c_ptrs, cast_out(acc, c_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


FP8_GEMM_TILE = {"BM": 64, "BN": 128, "BK": 128}


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty(m, n, dtype=torch.bfloat16, device=a.device)
    if m and n:
        t = FP8_GEMM_TILE
        fp8_gemm_kernel[(triton.cdiv(m, t["BM"]), triton.cdiv(n, t["BN"]))](
            a.contiguous(), sa.contiguous(), b.contiguous(), sb.contiguous(), c, m, n, k, **t, INTERP=INTERPRETED)
    elif m and not k:
        c.zero_()
    return c
