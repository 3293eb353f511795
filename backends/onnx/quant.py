"""FP8 quantization as ONNX graphs: act_quant, dequant, weight_dequant, fp8_gemm.

The FP8 element cast is ONNX's own ``Cast(to=FLOAT8E4M3FN | FLOAT8E4M3FNUZ,
saturate=1)`` (round to nearest even, beyond +-fmax to +-fmax, NaN stays
NaN), so the bytes come from ONNX Runtime's converter, not torch's.

ONNX has no bitcast, so a ue8m0 scale (s rounded up to a power of two)
cannot be read off the float's exponent bits. :func:`pow2_ceil` derives the
exponent exactly instead: a float32 ``ceil(log(s) / ln 2)`` is within one of
the true exponent for every positive float (its error is a few ulps of a
number below 150), and two exact comparisons against a table of the 277
float32 powers of two (2^-149 .. 2^127) correct it, so the result is the
smallest power of two >= s with no rounding anywhere. A test proves it on
every power-of-two boundary (2^k and its two float32 neighbours).
"""
from __future__ import annotations

import math
from functools import reduce

import numpy as np
import torch

from .runtime import BF16, FLOAT, INT64, Graph, cached, compile_graph, elem_of, signature, to_float
from ...core.fp8 import AMAX_FLOOR, Fp8Format, ScaleFormat, fp8_format, scale_format

POW2_LO, POW2_HI = -149, 127
POW2_TABLE = np.array([math.ldexp(1.0, k) for k in range(POW2_LO, POW2_HI + 1)], dtype=np.float32)


def _prod(shape) -> int:
    return reduce(lambda a, b: a * b, shape, 1)


def pow2_ceil_graph(g: Graph, s: str) -> str:
    """2^ceil(log2 s), exactly, for positive float32 s up to 2^127; inf and NaN pass through (non-finite in, out)."""
    table = g.const(POW2_TABLE)
    finite = g.Not(g.Or(g.IsNaN(s), g.IsInf(s)))
    safe = g.Where(finite, s, np.float32(1.0))
    est = g.Ceil(g.Div(g.Log(safe), np.float32(math.log(2.0))))
    top = len(POW2_TABLE) - 1
    i0 = g.Clip(g.Cast(g.Sub(est, np.float32(POW2_LO)), to=INT64), np.int64(1), np.int64(top))
    # one step down if the power below already covers s, one up if the current one does not
    i1 = g.Sub(i0, g.Cast(g.GreaterOrEqual(g.Gather(table, g.Sub(i0, np.int64(1))), safe), to=INT64))
    i2 = g.Add(i1, g.Cast(g.Less(g.Gather(table, i1), safe), to=INT64))
    return g.Where(finite, g.Gather(table, g.Clip(i2, np.int64(0), np.int64(top))), s)


def pow2_ceil(s: torch.Tensor) -> torch.Tensor:
    """Run :func:`pow2_ceil_graph` on a float32 tensor (for tests and the scale formats)."""
    def build():
        g = Graph("pow2_ceil")
        g.output(pow2_ceil_graph(g, g.input("s", FLOAT, s.shape)), "p", FLOAT, s.shape)
        return compile_graph(g, [("p", torch.float32, tuple(s.shape))])
    return cached(("pow2_ceil", signature(s)), build)(s=s.float())[0]


def group_scale(g: Graph, groups: str, fmt: Fp8Format, sfmt: ScaleFormat) -> str:
    """The dequantization scale of each group (last axis reduced), SPEC §2; a NaN anywhere in a group gives NaN."""
    amax = g.ReduceMax(g.Abs(groups), g.i64(-1), keepdims=0)
    has_nan = g.ReduceMax(g.Cast(g.IsNaN(groups), to=FLOAT), g.i64(-1), keepdims=0)
    amax = g.Where(g.Greater(has_nan, np.float32(0)), np.float32(np.nan), amax)
    # Less(NaN, floor) is false, so the floor never replaces a NaN amax by a finite stand-in
    amax = g.Where(g.Less(amax, np.float32(AMAX_FLOOR)), np.float32(AMAX_FLOOR), amax)
    s = g.Div(amax, np.float32(fmt.max))
    return pow2_ceil_graph(g, s) if sfmt.name == "ue8m0" else s


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    f, sf = fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant")
    lead, n = tuple(x.shape[:-1]), x.shape[-1]
    rows, groups = _prod(lead), n // block

    def build():
        g = Graph("act_quant")
        xf = to_float(g, g.input("x", elem_of(x), x.shape), elem_of(x))
        grp = g.Reshape(xf, g.i64(rows, groups, block), allowzero=1)
        s = group_scale(g, grp, f, sf)
        y = g.Cast(g.Div(grp, g.Unsqueeze(s, g.i64(-1))), to=elem_of(f.dtype), saturate=1)
        g.output(g.Reshape(y, g.i64(*x.shape), allowzero=1), "y", elem_of(f.dtype), x.shape)
        g.output(g.Reshape(s, g.i64(*lead, groups), allowzero=1), "s", FLOAT, (*lead, groups))
        return compile_graph(g, [("y", f.dtype, tuple(x.shape)), ("s", torch.float32, (*lead, groups))])
    return cached(("act_quant", signature(x), block, f.name, sf.name), build)(x=x)


def _expand_groups(g: Graph, y: str, s: str, shape: tuple[int, ...], block: int) -> str:
    rows, n = _prod(shape[:-1]), shape[-1]
    grp = g.Reshape(g.Cast(y, to=FLOAT), g.i64(rows, n // block, block), allowzero=1)
    sg = g.Reshape(s, g.i64(rows, n // block, 1), allowzero=1)
    return g.Reshape(g.Mul(grp, sg), g.i64(*shape), allowzero=1)


def dequant(y: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    def build():
        g = Graph("dequant")
        x = _expand_groups(g, g.input("y", elem_of(y), y.shape), g.input("s", FLOAT, s.shape), tuple(y.shape), block)
        g.output(x, "x", FLOAT, y.shape)
        return compile_graph(g, [("x", torch.float32, tuple(y.shape))])
    return cached(("dequant", signature(y, s), block), build)(y=y, s=s)[0]


def block_scale_full(g: Graph, s: str, n: int, k: int, block: int) -> str:
    """s [cdiv(n, block), cdiv(k, block)] spread to [n, k] by two static Gathers."""
    rows = g.const(np.arange(n) // block, np.int64)
    cols = g.const(np.arange(k) // block, np.int64)
    return g.Gather(g.Gather(s, rows, axis=0), cols, axis=1)


def weight_dequant(w: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    n, k = w.shape

    def build():
        g = Graph("weight_dequant")
        wf = g.Cast(g.input("w", elem_of(w), w.shape), to=FLOAT)
        full = block_scale_full(g, g.input("s", FLOAT, s.shape), n, k, block)
        g.output(g.Mul(wf, full), "x", FLOAT, (n, k))
        return compile_graph(g, [("x", torch.float32, (n, k))])
    return cached(("weight_dequant", signature(w, s), block), build)(w=w, s=s)[0]


def fp8_gemm_graph(g: Graph, a: str, sa: str, b: str, sb: str, m: int, n: int, k: int) -> str:
    """The contract literally: one fp32 partial product per 128-wide K block ([KB, M, N]), each scaled by
    sa[m, kb] * sb[n // 128, kb], then summed over KB. FP8 values widen to fp32 exactly and their products
    (8 significant bits) are exact, so the only roundings are the fp32 sums."""
    kb = k // 128
    af = g.Transpose(g.Reshape(g.Cast(a, to=FLOAT), g.i64(m, kb, 128), allowzero=1), perm=[1, 0, 2])   # [KB, M, 128]
    bf = g.Transpose(g.Reshape(g.Cast(b, to=FLOAT), g.i64(n, kb, 128), allowzero=1), perm=[1, 2, 0])   # [KB, 128, N]
    part = g.MatMul(af, bf)                                                                              # [KB, M, N]
    sa_t = g.Unsqueeze(g.Transpose(sa, perm=[1, 0]), g.i64(2))                                           # [KB, M, 1]
    sb_n = g.Gather(sb, g.const(np.arange(n) // 128, np.int64), axis=0)                                  # [N, KB]
    sb_t = g.Unsqueeze(g.Transpose(sb_n, perm=[1, 0]), g.i64(1))                                         # [KB, 1, N]
    return g.ReduceSum(g.Mul(g.Mul(part, sa_t), sb_t), g.i64(0), keepdims=0)


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]

    def build():
        g = Graph("fp8_gemm")
        c = fp8_gemm_graph(g, g.input("a", elem_of(a), a.shape), g.input("sa", FLOAT, sa.shape),
                           g.input("b", elem_of(b), b.shape), g.input("sb", FLOAT, sb.shape), m, n, k)
        g.output(g.Cast(c, to=BF16), "c", BF16, (m, n))
        return compile_graph(g, [("c", torch.bfloat16, (m, n))])
    return cached(("fp8_gemm", signature(a, sa, b, sb)), build)(a=a, sa=sa, b=b, sb=sb)[0]


