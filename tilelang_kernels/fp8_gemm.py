"""fp8_gemm: block-scaled FP8 GEMM, C = A . B^T with per-128 scales (SPEC section 2).

Tiling follows DeepSeek's fp8_gemm: BK = 128 equals the scale block, so each
K step is one tensor-core GEMM of a (BM x 128) by (128 x BN) fp8 tile into a
fresh fp32 fragment, promoted into the running fp32 accumulator with
sa[m, kb] * sb[n // 128, kb]. That promotion every 128 is the contract's
"each 128-wide partial sum promoted to fp32" (and what keeps Hopper's fp8
wgmma accumulation, which carries fewer mantissa bits, from drifting).
BN = 128 so one program's columns share one row of sb.

The GPU form feeds the fp8 shared tiles straight to T.gemm (wgmma on sm_90a,
mfma on gfx950) and stages A and B through a software pipeline. The CPU form
loads the same tiles as bytes, decodes them exactly to fp32 (the c target has
no fp8 type) and runs TileLang's scalar GEMM on them; products of two fp8
values are exact in fp32, so only the summation order differs.
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects
from typing import Any

from .target import Profile

OPS = ("fp8_gemm",)
BM, BN, BK = 64, 128, 128


def program(p: Profile, N: int | None = None, K: int | None = None, fmt: str = "e4m3fn", stages: int = 3) -> Any:
    T = p.T
    # M always dynamic; N and K too unless the AOT build specializes them.
    M = T.dynamic("M")
    N, NB = (N, (N + 127) // 128) if N is not None else (T.dynamic("N"), T.dynamic("NB"))
    K, KB = (K, K // BK) if K is not None else (T.dynamic("K"), T.dynamic("KB"))
    f8 = p.fp8(fmt)

    @T.prim_func
    def fp8_gemm(A: T.Tensor((M, K), f8), SA: T.Tensor((M, KB), "float32"), B: T.Tensor((N, K), f8),
                 SB: T.Tensor((NB, KB), "float32"), C: T.Tensor((M, N), p.bf16())):
        with p.kernel(T.ceildiv(N, BN), T.ceildiv(M, BM), threads=128) as (bx, by):
            a_s = p.stage((BM, BK), f8)
            b_s = p.stage((BN, BK), f8)
            c_blk = p.tile((BM, BN), "float32")
            c_acc = p.tile((BM, BN), "float32")
            T.clear(c_acc)
            for kb in T.Pipelined(KB, num_stages=stages if p.gpu else 1):
                T.copy(A[by * BM, kb * BK], a_s)
                T.copy(B[bx * BN, kb * BK], b_s)
                if p.gpu:
                    T.gemm(a_s, b_s, c_blk, transpose_B=True, clear_accum=True)
                else:
                    a_f = p.tile((BM, BK), "float32")
                    b_f = p.tile((BN, BK), "float32")
                    for i, k in p.loop(BM, BK):
                        a_f[i, k] = p.load_fp8(a_s[i, k], fmt)
                    for j, k in p.loop(BN, BK):
                        b_f[j, k] = p.load_fp8(b_s[j, k], fmt)
                    T.gemm(a_f, b_f, c_blk, transpose_B=True, clear_accum=True)
                for i, j in p.loop(BM, BN):
                    c_acc[i, j] += c_blk[i, j] * T.if_then_else(by * BM + i < M, SA[by * BM + i, kb], T.float32(0)) * SB[bx, kb]
            for i, j in p.loop(BM, BN):
                if by * BM + i < M and bx * BN + j < N:
                    C[by * BM + i, bx * BN + j] = p.store_bf16(c_acc[i, j])

    return fp8_gemm


def build_configs(fp8: str) -> list[dict[str, Any]]:
    """wq_b-like (N = 24576 = 128 heads x 192, K = 1536) and wkv_a-like shapes, in the target's FP8 format."""
    return [dict(N=24576, K=1536, fmt=fp8), dict(N=576, K=7168, fmt=fp8)]
