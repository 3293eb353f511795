"""Rounding helpers shared by every kernel.

Both helpers return float32 values that already lie on the target grid,
rounded to nearest-even, so the final ``.to(dtype)`` cast is exact. GPUs round
fp32 -> bf16/fp8 to nearest-even anyway, but the Triton 3.9 interpreter does
not (its fp32 -> bf16 cast truncates and its fp32 -> fp8 cast rounds half up
without carrying into the exponent). Rounding explicitly makes the kernels
bit-identical on CPU and GPU at the cost of a few integer ops per element.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_bf16(x):
    """fp32 -> fp32 on the bf16 grid (RNE); NaN stays NaN."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))


@triton.jit
def cast_out(x, DST: tl.constexpr):
    """Cast fp32 to the output element type with round-to-nearest-even."""
    if DST == tl.bfloat16:
        return round_bf16(x).to(DST)
    else:
        return x.to(DST)


@triton.jit
def round_fp8(v, MIN_NORMAL: tl.constexpr):
    """fp32 with |v| <= fmax -> fp32 on the e4m3 grid (3 mantissa bits, RNE).

    Normal range: round the fp32 mantissa to 3 bits with a carry into the
    exponent. Subnormal range (|v| < MIN_NORMAL): the grid step is constant,
    MIN_NORMAL / 8, and adding then subtracting 1.5 * 2**23 steps rounds to
    it in fp32 hardware (RNE). The sign bit is reattached so -0 and -tiny give -0.
    """
    bits = v.to(tl.uint32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000).to(tl.float32, bitcast=True)
    a = tl.abs(v)
    magic = MIN_NORMAL * 1572864.0  # (MIN_NORMAL / 8) * 1.5 * 2**23
    sub = (a + magic) - magic
    sub = tl.where((bits >> 31) != 0, -sub, sub)
    return tl.where(a < MIN_NORMAL, sub, normal)


@triton.jit
def _probe():
    pass


INTERPRETED: bool = type(_probe).__name__ == "InterpretedFunction"
"""Whether this process's kernels run in the interpreter: decided when they are
decorated (TRITON_INTERPRET=1 set before triton was imported), so it is read
off a decorated function, not the environment. The one answer every module of
this backend uses; interpreter kernels cannot be compiled ahead of time."""


@triton.jit
def mma(a, b, INTERP: tl.constexpr):
    """tl.dot with fp32 accumulation and no silent TF32 for fp32 operands.

    The Triton 3.9 interpreter multiplies bf16 operands as their raw uint16
    bits, so under the interpreter bf16 operands are widened to fp32 first
    (exact; the GPU's bf16 MMA also accumulates exact products in fp32). The
    compiled kernels (INTERP=False) keep the bf16 MMA.
    """
    if INTERP and a.dtype == tl.bfloat16:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    elif INTERP and (a.dtype == tl.float8e4nv or a.dtype == tl.float8e4b8):
        return tl.dot(fp8_to_f32(a, INTERP), fp8_to_f32(b, INTERP), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def fp8_to_f32(x, INTERP: tl.constexpr):
    """e4m3fn / e4m3fnuz -> fp32 with the NaN codes read as NaN (SPEC §10: a NaN input is reported).

    The GPUs' conversion instructions (and their FP8 MMAs) already do; the Triton 3.9 interpreter
    decodes the NaN codes (e4m3fn: S.1111.111, e4m3fnuz: 0x80) as finite numbers, so under the
    interpreter they are selected back to NaN. Compiled kernels (INTERP=False) pay nothing."""
    v = x.to(tl.float32)
    if INTERP:
        code = x.to(tl.uint8, bitcast=True)
        if x.dtype == tl.float8e4nv:
            v = tl.where((code & 0x7F) == 0x7F, float("nan"), v)
        else:
            v = tl.where(code == 0x80, float("nan"), v)
    return v
