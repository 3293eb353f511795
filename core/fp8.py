"""FP8 element and scale formats as objects.

Two OCP-style 8-bit float flavours meet in DeepSeek-V3.2 deployments:

* ``e4m3fn``   — max 448, has -0 and a single NaN pattern per sign. NVIDIA
  H800/H200 (sm_90a) and AMD MI350 (gfx950) compute in it natively.
* ``e4m3fnuz`` — max 240, no negative zero, one NaN (0x80). AMD MI300/MI325
  (gfx942) compute in it. Its exponent bias is one larger, so the same bits
  mean half the value: reading fnuz bytes as fn (or the reverse) is off by 2x,
  a classic silent porting bug.

Scale formats decide how a group's amax becomes its dequantization scale:
``fp32`` (s = amax / fmax) or ``ue8m0`` (s rounded UP to a power of two, so it
fits an 8-bit exponent and the divide by s is exact).

The arithmetic of the scale (amax, the division, the power-of-two rounding and
x / s) is specified in float32: that is what every GPU kernel does, and a
float64 reference would disagree with all of them by one ulp on rare inputs,
which breaks bit-exact conformance.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import ValidationError

AMAX_FLOOR = 1e-4
"""Group amax is clamped to at least this, so an all-zero group gets a finite scale."""


@dataclass(frozen=True)
class Fp8Format:
    name: str
    dtype: torch.dtype
    max: float
    archs: tuple[str, ...]

    def cast(self, x: torch.Tensor) -> torch.Tensor:
        """Saturating round-to-nearest-even cast (values beyond +-max clamp)."""
        return x.clamp(-self.max, self.max).to(self.dtype)

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class ScaleFormat:
    name: str

    def scale(self, amax: torch.Tensor, fmt: Fp8Format) -> torch.Tensor:
        """Dequantization scale (float32) for groups with the given amax; inf or NaN amax gives an inf
        or NaN scale, never a finite stand-in (the clamp keeps NaN)."""
        amax = amax.float().clamp_min(AMAX_FLOOR)
        s = amax / fmt.max
        if self.name == "ue8m0":
            s = pow2_ceil(s)
        return s

    def __str__(self) -> str:
        return self.name


def pow2_ceil(x: torch.Tensor) -> torch.Tensor:
    """2**ceil(log2(x)) for positive finite float32 x, exactly, from the bits.

    frexp gives x = m * 2**e with m in [0.5, 1): x is a power of two iff
    m == 0.5, in which case it is its own ceiling; otherwise the ceiling is
    2**e. No log2 rounding is involved, so this is bit-exact on any device.
    Non-finite x (the scale of a group whose amax is inf or NaN) stays
    non-finite: frexp would report exponent 0 for it, i.e. a finite stand-in
    of 1 that turns an inf input into a finite 448 (SPEC §10).
    """
    x = x.float()
    m, e = torch.frexp(x)
    e = torch.where(m == 0.5, e - 1, e)
    return torch.where(torch.isfinite(x), torch.ldexp(torch.ones_like(x), e), x)


E4M3FN = Fp8Format("e4m3fn", torch.float8_e4m3fn, 448.0, ("sm_89", "sm_90a", "gfx950"))
E4M3FNUZ = Fp8Format("e4m3fnuz", torch.float8_e4m3fnuz, 240.0, ("gfx942",))
FP32 = ScaleFormat("fp32")
UE8M0 = ScaleFormat("ue8m0")

FP8_FORMATS: dict[str, Fp8Format] = {f.name: f for f in (E4M3FN, E4M3FNUZ)}
SCALE_FORMATS: dict[str, ScaleFormat] = {f.name: f for f in (FP32, UE8M0)}
FP8_DTYPES: dict[torch.dtype, Fp8Format] = {f.dtype: f for f in FP8_FORMATS.values()}


def fp8_format(value: str | Fp8Format | torch.dtype, op: str = "fp8", arg: str = "fmt") -> Fp8Format:
    """Look up an element format by name, dtype or object; errors name op and arg."""
    if isinstance(value, Fp8Format):
        return value
    found = FP8_DTYPES.get(value) if isinstance(value, torch.dtype) else FP8_FORMATS.get(value)
    if found is None:
        raise ValidationError(op, arg, f"one of {sorted(FP8_FORMATS)}", repr(value))
    return found


def scale_format(value: str | ScaleFormat, op: str = "fp8", arg: str = "scale_fmt") -> ScaleFormat:
    if isinstance(value, ScaleFormat):
        return value
    found = SCALE_FORMATS.get(value)
    if found is None:
        raise ValidationError(op, arg, f"one of {sorted(SCALE_FORMATS)}", repr(value))
    return found


def format_for_arch(arch: str) -> Fp8Format:
    """The element format a GPU architecture computes in natively."""
    for f in FP8_FORMATS.values():
        if arch in f.archs:
            return f
    raise ValidationError("fp8", "arch", f"one of {[a for f in FP8_FORMATS.values() for a in f.archs]}", repr(arch))


def quantize_groups(x: torch.Tensor, block: int, fmt: Fp8Format, scale_fmt: ScaleFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """act_quant's contract, once: per contiguous group of ``block`` along the
    last dim, s = scale(amax) and y = cast(clamp(x / s)), all in float32 (the
    arithmetic every kernel uses), so any device gives the same bits."""
    g = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    s = scale_fmt.scale(g.abs().amax(dim=-1), fmt)
    y = fmt.cast(g / s.unsqueeze(-1))
    return y.reshape(x.shape), s
