"""Reading and writing IEEE floats in uint8 caches without a bitcast (ONNX has none).

The paged caches store FP8 codes and little-endian fp32 scales as raw bytes.
An FP8 code becomes its value by a Gather from the 256-entry table of the
format's values; an fp32 is rebuilt from its four bytes with integer
arithmetic: sign, 8-bit exponent and 23-bit mantissa are split by Div/Mod,
the significand (at most 24 bits) is exact as a float32, and the power of
two comes from the exact table of :mod:`quant`, so the product is the
stored value bit for bit (zeros, subnormals, infinities and NaN included).

Writing is the inverse: the exponent of |x| is found exactly (a float32 log
estimate corrected by two exact comparisons against the power-of-two table,
as for ue8m0 scales), the significand divided by that power of two is exact,
and the fields are assembled as integers and split into bytes by Div/Mod.
"""
from __future__ import annotations

import numpy as np
import torch

from .quant import POW2_LO, POW2_TABLE
import math

from .runtime import BF16, FLOAT, INT64, Graph
from ...core.fp8 import Fp8Format


def fp8_table(fmt: Fp8Format) -> np.ndarray:
    """Value of each of the 256 codes of ``fmt`` in float32 (every FP8 value is exact there)."""
    return torch.arange(256, dtype=torch.uint8).view(fmt.dtype).float().numpy()


def fp8_from_bytes(g: Graph, codes: str, fmt: Fp8Format) -> str:
    return g.Gather(g.const(fp8_table(fmt)), g.Cast(codes, to=INT64), axis=0)


def f32_from_bytes(g: Graph, b: str) -> str:
    """float32 [...] from uint8 [..., 4] (little-endian)."""
    i = g.Cast(b, to=INT64)
    b0, b1, b2, b3 = (g.Squeeze(x, g.i64(-1)) for x in g.Split(i, axis=-1, num_outputs=4, n_out=4))
    sign = g.Div(b3, np.int64(128))
    e = g.Add(g.Mul(g.Mod(b3, np.int64(128)), np.int64(2)), g.Div(b2, np.int64(128)))
    m = g.Add(g.Add(g.Mul(g.Mod(b2, np.int64(128)), np.int64(65536)), g.Mul(b1, np.int64(256))), b0)
    normal = g.Greater(e, np.int64(0))
    sig = g.Cast(g.Where(normal, g.Add(m, np.int64(1 << 23)), m), to=FLOAT)      # <= 2^24: exact in float32
    # value = sig * 2^(max(e, 1) - 150); table index of 2^k is k - POW2_LO
    scale = g.Gather(g.const(POW2_TABLE), g.Sub(g.Where(normal, e, np.int64(1)), np.int64(150 + POW2_LO)), axis=0)
    # the sign rides on the (never zero) power of two, so a zero significand gives -0 exactly where stored:
    # ORT computes Neg, and Mul by -1 after its rewrites, as a subtraction that turns -0 into +0
    neg = g.Equal(sign, np.int64(1))
    v = g.Mul(sig, g.Where(neg, g.Mul(scale, np.float32(-1.0)), scale))
    special = g.Equal(e, np.int64(255))
    inf = g.Where(neg, np.float32(-np.inf), np.float32(np.inf))
    return g.Where(special, g.Where(g.Equal(m, np.int64(0)), inf, np.float32(np.nan)), v)


def floor_exponent(g: Graph, mag: str) -> str:
    """int64 e with 2^e <= mag < 2^(e+1), exactly, for positive finite float32 mag (subnormals included)."""
    table, top = g.const(POW2_TABLE), len(POW2_TABLE) - 1
    est = g.Floor(g.Div(g.Log(mag), np.float32(math.log(2.0))))
    i = g.Clip(g.Cast(g.Sub(est, np.float32(POW2_LO)), to=INT64), np.int64(0), np.int64(top))
    i = g.Sub(i, g.Cast(g.And(g.Greater(g.Gather(table, i), mag), g.Greater(i, np.int64(0))), to=INT64))
    nxt = g.Clip(g.Add(i, np.int64(1)), np.int64(0), np.int64(top))
    i = g.Add(i, g.Cast(g.And(g.LessOrEqual(g.Gather(table, nxt), mag), g.Less(i, np.int64(top))), to=INT64))
    return g.Add(i, np.int64(POW2_LO))


def float_code(g: Graph, x: str, ebits: int, mbits: int, bias: int, nan_code: int, inf_code: int | None,
               signed_zero: bool) -> str:
    """int64 bit pattern of float32 x (a value the target format represents exactly) in a format with
    ``ebits`` exponent and ``mbits`` mantissa bits."""
    table = g.const(POW2_TABLE)
    emin = 1 - bias
    mag = g.Abs(x)
    zero = g.Equal(mag, np.float32(0))
    safe = g.Where(g.Or(zero, g.Or(g.IsNaN(x), g.IsInf(x))), np.float32(1), mag)
    e = floor_exponent(g, safe)
    normal = g.GreaterOrEqual(e, np.int64(emin))
    p = g.Gather(table, g.Sub(g.Where(normal, e, np.int64(emin)), np.int64(POW2_LO)))       # 2^e, or 2^emin below it
    frac = g.Div(safe, p)                                                                     # exact: a power-of-two divide
    frac = g.Where(normal, g.Sub(frac, np.float32(1)), frac)
    mant = g.Cast(g.Mul(frac, np.float32(2.0 ** mbits)), to=INT64)                             # an integer < 2^mbits
    field = g.Where(normal, g.Add(e, np.int64(bias)), np.int64(0))
    code = g.Where(zero, np.int64(0), g.Add(g.Mul(field, np.int64(1 << mbits)), mant))
    # the sign bit: negative values, and -0 (1 / -0 = -inf) where the format has a negative zero
    neg = g.Less(x, np.float32(0))
    if signed_zero:
        neg = g.Or(neg, g.And(zero, g.Less(g.Div(np.float32(1), x), np.float32(0))))
    code = g.Where(neg, g.Add(code, np.int64(1 << (ebits + mbits))), code)
    if inf_code is not None:
        code = g.Where(g.IsInf(x), g.Where(neg, np.int64(inf_code + (1 << (ebits + mbits))), np.int64(inf_code)), code)
    return g.Where(g.IsNaN(x), np.int64(nan_code), code)


def f32_bytes(g: Graph, x: str) -> str:
    """uint8 [..., 4] little-endian bytes of float32 x."""
    code = float_code(g, x, 8, 23, 127, 0x7FC00000, 0x7F800000, True)
    parts = [g.Unsqueeze(g.Mod(g.Div(code, np.int64(1 << (8 * i))), np.int64(256)), g.i64(-1)) for i in range(4)]
    return g.Cast(g.Concat(*parts, axis=-1), to=2)  # TensorProto.UINT8


def bf16_bytes(g: Graph, x: str) -> str:
    """uint8 [..., 2]: x rounded to bf16 (nearest even, by ONNX Cast), the upper half of that value's fp32 bytes."""
    code = float_code(g, g.Cast(g.Cast(x, to=BF16), to=FLOAT), 8, 23, 127, 0x7FC00000, 0x7F800000, True)
    hi = g.Div(code, np.int64(1 << 16))
    parts = [g.Unsqueeze(g.Mod(g.Div(hi, np.int64(1 << (8 * i))), np.int64(256)), g.i64(-1)) for i in range(2)]
    return g.Cast(g.Concat(*parts, axis=-1), to=2)


def fp8_codes(g: Graph, y: str, fmt: Fp8Format) -> str:
    """uint8 codes of FP8 y (passed as its exact float32 values)."""
    if fmt.name == "e4m3fn":
        code = float_code(g, y, 4, 3, 7, 0x7F, None, True)
    else:  # e4m3fnuz: no negative zero, 0x80 its one NaN
        code = float_code(g, y, 4, 3, 8, 0x80, None, False)
    return g.Cast(code, to=2)
