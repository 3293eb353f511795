"""act_quant: per-row, per-128-group FP8 quantization (SPEC section 2).

One program quantizes a BM x G tile (BM rows, one group of G = 128 columns):
amax over the group, the scale s = max(amax, 1e-4) / fmax (rounded up to a
power of two for ue8m0), then y = cast(clamp(x / s, -fmax, fmax)). The scale
arithmetic is float32 on every target (the contract in dsport.core.fp8), and
the power-of-two rounding works on the float bits so it is exact everywhere;
DeepSeek's kernel reaches the same value through log2/ceil.
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects

from typing import Any

from .target import FP8_MAX, Profile, pow2_ceil

OPS = ("act_quant",)
AMAX_FLOOR = 1e-4
BM = 32  # rows per program: 32 x 128 fp32 is 32 registers per thread at 128 threads


def program(p: Profile, N: int | None = None, dtype: str = "bfloat16", fmt: str = "e4m3fn",
            scale_fmt: str = "ue8m0", group: int = 128) -> Any:
    T = p.T
    # Rows (and, for the CPU runner, columns) are dynamic: one compiled kernel
    # serves every batch size. The AOT build passes N to specialize.
    M = T.dynamic("M")
    N, NG = (N, N // group) if N is not None else (T.dynamic("N"), T.dynamic("NG"))
    G, fmax = group, FP8_MAX[fmt]
    ue8m0 = scale_fmt == "ue8m0"

    @T.prim_func
    def act_quant(X: T.Tensor((M, N), p.io(dtype)), Y: T.Tensor((M, N), p.fp8(fmt)),
                  S: T.Tensor((M, NG), "float32")):
        with p.kernel(T.ceildiv(M, BM), NG, threads=128) as (bm, g):
            x = p.tile((BM, G), "float32")
            nan = p.tile((BM, G), "float32")
            amax = p.tile((BM,), "float32")
            nans = p.tile((BM,), "float32")
            s = p.tile((BM,), "float32")
            for i, j in p.loop(BM, G):
                # rows past M read 0: their amax hits the floor and nothing is stored
                x[i, j] = T.if_then_else(bm * BM + i < M, p.load(X[bm * BM + i, g * G + j], dtype), T.float32(0))
                nan[i, j] = T.if_then_else(T.isnan(x[i, j]), x[i, j], T.float32(0))
            T.reduce_absmax(x, amax, dim=1)
            # absmax may drop NaN (max semantics): the NaN-only sum (0 or NaN) puts it back, so a group
            # holding NaN gets a NaN scale, never a finite one (SPEC §10)
            T.reduce_sum(nan, nans, dim=1)
            for i in p.loop(BM):
                s[i] = (T.max(amax[i], T.float32(AMAX_FLOOR)) + nans[i]) / T.float32(fmax)
                if ue8m0:
                    s[i] = pow2_ceil(T, s[i])
                if bm * BM + i < M:
                    S[bm * BM + i, g] = s[i]
            for i, j in p.loop(BM, G):
                if bm * BM + i < M:
                    Y[bm * BM + i, g * G + j] = p.store_fp8(T.if_then_else(
                        T.isnan(x[i, j] / s[i]), x[i, j] / s[i],  # NaN (inf / inf, NaN groups) stays NaN
                        T.clamp(x[i, j] / s[i], T.float32(-fmax), T.float32(fmax))), fmt)

    return act_quant


def build_configs(fp8: str) -> list[dict[str, Any]]:
    """Shapes lowered for the AOT build, in the target's FP8 format: the hidden size."""
    return [dict(N=7168, dtype="bfloat16", fmt=fp8, scale_fmt="ue8m0")]
