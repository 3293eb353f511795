"""rms_norm, optionally fused with the residual add (SPEC section 3).

One program normalizes one row of D elements held whole in a register tile
(D = 7168 is 28 fp32 values per thread at 256 threads): sum of squares by a
tile reduction, then y = w * (x * rsqrt(mean(x^2) + eps)) in float32, the
order of DeepSeek's RMSNorm. With a residual, x + residual is formed in
float32, normalized, and also written back (rounded to the storage type) as
the new residual.
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects
from typing import Any

from .target import Profile

OPS = ("rms_norm",)
THREADS = 256


def program(p: Profile, D: int, dtype: str = "bfloat16", w_dtype: str = "bfloat16",
            residual: bool = False, eps: float = 1e-6) -> Any:
    T = p.T
    M = T.dynamic("M")
    io, wio = p.io(dtype), p.io(w_dtype)

    @T.macro
    def normalize(row, x, W, Y):
        sq = p.tile((1, D), "float32")
        ss = p.tile((1,), "float32")
        for i, j in p.loop(1, D):
            sq[i, j] = x[i, j] * x[i, j]
        T.reduce_sum(sq, ss, dim=1)
        for i, j in p.loop(1, D):
            Y[row, j] = p.store(p.load(W[j], w_dtype) * (x[i, j] * T.rsqrt(ss[i] / T.float32(D) + T.float32(eps))), dtype)

    if residual:
        @T.prim_func
        def rms_norm_residual(X: T.Tensor((M, D), io), W: T.Tensor((D,), wio), R: T.Tensor((M, D), io),
                              Y: T.Tensor((M, D), io), RO: T.Tensor((M, D), io)):
            with p.kernel(M, threads=THREADS) as row:
                x = p.tile((1, D), "float32")
                for i, j in p.loop(1, D):
                    x[i, j] = p.load(X[row, j], dtype) + p.load(R[row, j], dtype)
                    RO[row, j] = p.store(x[i, j], dtype)
                normalize(row, x, W, Y)

        return rms_norm_residual

    @T.prim_func
    def rms_norm(X: T.Tensor((M, D), io), W: T.Tensor((D,), wio), Y: T.Tensor((M, D), io)):
        with p.kernel(M, threads=THREADS) as row:
            x = p.tile((1, D), "float32")
            for i, j in p.loop(1, D):
                x[i, j] = p.load(X[row, j], dtype)
            normalize(row, x, W, Y)

    return rms_norm


def build_configs(fp8: str) -> list[dict[str, Any]]:  # no FP8 operand: the same on every target
    return [dict(D=7168, residual=True), dict(D=1536), dict(D=512)]
