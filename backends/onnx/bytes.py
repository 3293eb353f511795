"""Reading IEEE floats out of uint8 caches without a bitcast (ONNX has none).

The paged caches store FP8 codes and little-endian fp32 scales as raw bytes.
An FP8 code becomes its value by a Gather from the 256-entry table of the
format's values; an fp32 is rebuilt from its four bytes with integer
arithmetic: sign, 8-bit exponent and 23-bit mantissa are split by Div/Mod,
the significand (at most 24 bits) is exact as a float32, and the power of
two comes from the exact table of :mod:`quant`, so the product is the
stored value bit for bit (zeros, subnormals, infinities and NaN included).
"""
from __future__ import annotations

import numpy as np
import torch

from dsport.backends.onnx.quant import POW2_LO, POW2_TABLE
from dsport.backends.onnx.runtime import FLOAT, INT64, Graph
from dsport.core.fp8 import Fp8Format


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
