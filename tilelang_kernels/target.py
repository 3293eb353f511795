"""One tile program, several targets: the switches a kernel reads.

Every kernel in this package is a function ``program(p: Profile, ...)`` that
returns a TileLang ``PrimFunc``. The body is written once; the few places
where the GPU form cannot run on TileLang's CPU ``c`` target go through this
profile, so the difference is named in one spot instead of scattered:

* **Memory scopes.** On a GPU, staging tiles live in shared memory
  (``alloc_shared``) and accumulators in register fragments
  (``alloc_fragment``) whose layout the compiler spreads over threads. The CPU
  pipeline has no threads: its reductions and GEMM accept only ``local``
  buffers, so both become ``alloc_local``.
* **Loops.** ``T.Parallel`` maps a tile loop onto threads; on CPU it is
  rejected over local buffers (they are thread-private), so tile loops are
  serial there. ``T.Pipelined`` lowers on both (on CPU it is a plain loop).
* **Launch.** ``T.Kernel(grid, threads=N)`` on a GPU; ``T.Kernel(grid)`` on
  CPU, where the grid becomes the outer loop nest.
* **Storage types.** The ``c`` code generator has no bfloat16 or float8 C
  type. The CPU form therefore takes and returns those tensors as their raw
  bits (uint16 / uint8) and converts with exact integer arithmetic
  (:func:`bf16_decode`, :func:`fp8_encode`, ...); the GPU form loads the
  native types and converts with ``T.Cast`` (cvt instructions). Both round to
  nearest-even and saturate the same way, so they produce the same bits.
* **Atomics.** GPU histograms use ``T.atomic_add``; the CPU form runs one
  program at a time and increments in place.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from types import ModuleType
from typing import Any

# Element format facts, mirrored from dsport.core.fp8 (max) plus the exponent
# bias the bit-level conversions need: e4m3fn has bias 7 and NaN at 0x7F/0xFF;
# e4m3fnuz has bias 8, no negative zero, and NaN at 0x80.
FP8_BIAS = {"e4m3fn": 7, "e4m3fnuz": 8}
FP8_MAX = {"e4m3fn": 448.0, "e4m3fnuz": 240.0}
FP8_TL_DTYPE = {"e4m3fn": "float8_e4m3fn", "e4m3fnuz": "float8_e4m3fnuz"}

TARGETS: dict[str, dict[str, Any]] = {
    # name -> (TileLang dialect module, TVM target config)
    "c": {"dialect": "tilelang.cpu.language", "target": "c"},
    "sm_90a": {"dialect": "tilelang.cuda.language", "target": {"kind": "cuda", "arch": "sm_90a"}},
    "gfx942": {"dialect": "tilelang.rocm.language", "target": {"kind": "hip", "mcpu": "gfx942"}},
    "gfx950": {"dialect": "tilelang.rocm.language", "target": {"kind": "hip", "mcpu": "gfx950"}},
}
BUILD_TARGETS: tuple[str, ...] = tuple(name for name, t in TARGETS.items() if name != "c")
"""The device targets kernels are built for ahead of time (``c`` runs here instead)."""


@dataclass(frozen=True)
class Profile:
    """What a kernel body needs to know about the target it is lowered for."""

    name: str  # a key of TARGETS

    @property
    def gpu(self) -> bool:
        return self.name != "c"

    @cached_property
    def T(self) -> ModuleType:  # noqa: N802 - the TileLang convention
        return importlib.import_module(TARGETS[self.name]["dialect"])

    @property
    def tvm_target(self) -> Any:
        from tvm.target import Target

        return Target(TARGETS[self.name]["target"])

    # -- launch, scopes, loops ------------------------------------------------
    def kernel(self, *grid: Any, threads: int = 128) -> Any:
        return self.T.Kernel(*grid, threads=threads) if self.gpu else self.T.Kernel(*grid)

    def stage(self, shape: tuple, dtype: str) -> Any:
        """A tile staged from global memory (shared memory on a GPU)."""
        return self.T.alloc_shared(shape, dtype) if self.gpu else self.T.alloc_local(shape, dtype)

    def tile(self, shape: tuple, dtype: str) -> Any:
        """A tile held in registers (a fragment on a GPU)."""
        return self.T.alloc_fragment(shape, dtype) if self.gpu else self.T.alloc_local(shape, dtype)

    def loop(self, *extents: Any) -> Any:
        """A loop over tile elements: threads on a GPU, serial on CPU."""
        if self.gpu:
            return self.T.Parallel(*extents)
        return self.T.serial(extents[0]) if len(extents) == 1 else self.T.grid(*extents)

    # -- storage types --------------------------------------------------------
    def bf16(self) -> str:
        return "bfloat16" if self.gpu else "uint16"

    def io(self, dtype: str) -> str:
        """Storage type of a float tensor of ``dtype`` ("bfloat16"/"float32")."""
        return self.bf16() if dtype == "bfloat16" else dtype

    def load(self, v: Any, dtype: str) -> Any:
        return self.load_bf16(v) if dtype == "bfloat16" else self.T.Cast("float32", v)

    def store(self, v: Any, dtype: str) -> Any:
        return self.store_bf16(v) if dtype == "bfloat16" else self.T.Cast(dtype, v)

    def fp8(self, fmt: str) -> str:
        return FP8_TL_DTYPE[fmt] if self.gpu else "uint8"

    def load_bf16(self, v: Any) -> Any:
        return self.T.Cast("float32", v) if self.gpu else bf16_decode(self.T, v)

    def store_bf16(self, v: Any) -> Any:
        return self.T.Cast("bfloat16", v) if self.gpu else bf16_encode(self.T, v)

    def round_bf16(self, v: Any) -> Any:
        """v rounded to bf16 precision and widened back: the operand a GPU
        feeds its bf16 tensor cores, reproduced on CPU."""
        return self.load_bf16(self.store_bf16(v))

    def load_fp8(self, v: Any, fmt: str) -> Any:
        return self.T.Cast("float32", v) if self.gpu else fp8_decode(self.T, v, fmt)

    def store_fp8(self, v: Any, fmt: str) -> Any:
        """Saturating round-to-nearest-even cast of float32 ``v`` (already
        clamped to +-fmax by the caller) to the element format."""
        return self.T.Cast(FP8_TL_DTYPE[fmt], v) if self.gpu else fp8_encode(self.T, v, fmt)


# -- exact bit-level conversions for the CPU form -------------------------------
def as_u32(T: ModuleType, v: Any) -> Any:
    """The bits of a float32 value."""
    return T.reinterpret(v, "uint32")


def as_f32(T: ModuleType, v: Any) -> Any:
    return T.reinterpret(v, "float32")


def bf16_decode(T: ModuleType, bits: Any) -> Any:
    return as_f32(T, T.shift_left(T.Cast("uint32", bits), T.uint32(16)))


def bf16_encode(T: ModuleType, v: Any) -> Any:
    b = as_u32(T, v)
    rne = T.shift_right(b + T.uint32(0x7FFF) + T.bitwise_and(T.shift_right(b, T.uint32(16)), T.uint32(1)), T.uint32(16))
    return T.Cast("uint16", T.if_then_else(T.isnan(v), T.uint32(0x7FC0), rne))  # isnan: v != v folds to False


def fp8_decode(T: ModuleType, byte: Any, fmt: str) -> Any:
    bias = FP8_BIAS[fmt]
    b = T.Cast("uint32", byte)
    sign = T.shift_right(b, T.uint32(7))
    e = T.bitwise_and(T.shift_right(b, T.uint32(3)), T.uint32(15))
    m = T.bitwise_and(b, T.uint32(7))
    normal = as_f32(T, T.bitwise_or(
        T.bitwise_or(T.shift_left(sign, T.uint32(31)), T.shift_left(e + T.uint32(127 - bias), T.uint32(23))),
        T.shift_left(m, T.uint32(20))))
    sub_mag = T.Cast("float32", m) * T.float32(2.0 ** (1 - bias - 3))  # exact: m < 8 times a power of two
    sub = T.if_then_else(sign == T.uint32(1), -sub_mag, sub_mag)
    nan = (T.bitwise_and(b, T.uint32(0x7F)) == T.uint32(0x7F)) if fmt == "e4m3fn" else (b == T.uint32(0x80))
    return T.if_then_else(nan, T.float32(float("nan")), T.if_then_else(e == T.uint32(0), sub, normal))


def fp8_encode(T: ModuleType, v: Any, fmt: str) -> Any:
    """float32 -> e4m3 bits with round-to-nearest-even. Normals keep the top
    three mantissa bits (RNE on the float32 bits, a carry rolls into the
    exponent); subnormals are |v| / 2^(1-bias-3) rounded to an integer
    (8 there is exactly the smallest normal's code)."""
    bias = FP8_BIAS[fmt]
    bits = as_u32(T, v)
    sign = T.shift_right(bits, T.uint32(31))
    mag = T.bitwise_and(bits, T.uint32(0x7FFFFFFF))
    a = as_f32(T, mag)
    rne = mag + T.uint32(0x7FFFF) + T.bitwise_and(T.shift_right(mag, T.uint32(20)), T.uint32(1))
    normal = T.shift_right(rne, T.uint32(20)) - T.uint32((127 - bias) << 3)
    scaled = a * T.float32(2.0 ** (bias + 2))  # exact: a < 2^(1-bias) here
    q = T.Cast("uint32", scaled)  # truncation = floor for a >= 0
    frac = scaled - T.Cast("float32", q)
    up = T.Or(frac > T.float32(0.5), T.And(frac == T.float32(0.5), T.bitwise_and(q, T.uint32(1)) == T.uint32(1)))
    sub = T.if_then_else(up, q + T.uint32(1), q)
    code = T.if_then_else(a >= T.float32(2.0 ** (1 - bias)), normal, sub)
    if fmt == "e4m3fn":
        out = T.bitwise_or(T.shift_left(sign, T.uint32(7)), code)
        nan_code = T.uint32(0x7F)
    else:  # fnuz: no negative zero, so a zero magnitude drops the sign
        out = T.if_then_else(code == T.uint32(0), T.uint32(0), T.bitwise_or(T.shift_left(sign, T.uint32(7)), code))
        nan_code = T.uint32(0x80)
    # T.isnan, not v != v: the TIR simplifier folds v != v to False, which encoded NaN as a finite code
    return T.Cast("uint8", T.if_then_else(T.isnan(v), nan_code, out))


def pow2_ceil(T: ModuleType, s: Any) -> Any:
    """2^ceil(log2(s)) for positive normal float32 s, from the bits: a power
    of two (zero mantissa) is its own ceiling, otherwise bump the exponent.
    Exact on every target, unlike a log2/ceil/exp2 round trip."""
    b = as_u32(T, s)
    bumped = T.shift_left(T.shift_right(b, T.uint32(23)) + T.uint32(1), T.uint32(23))
    # a zero mantissa (a power of two) and an all-ones exponent (inf, NaN: SPEC §10) keep their bits
    keep = T.Or(T.bitwise_and(b, T.uint32(0x7FFFFF)) == T.uint32(0),
                T.bitwise_and(T.shift_right(b, T.uint32(23)), T.uint32(0xFF)) == T.uint32(0xFF))
    return as_f32(T, T.if_then_else(keep, b, bumped))


PROFILES: dict[str, Profile] = {name: Profile(name) for name in TARGETS}
