"""FP8 quantization with torch float8 dtypes. Where the device has no FP8
units the float8 tensors are only storage: values are widened to fp32 before
any arithmetic, which is exact (e4m3 has 4 significant bits), so the result is
bit-identical to the quant-mimicking reference on every device."""
from __future__ import annotations

import torch

from dsport.core.fp8 import Fp8Format, ScaleFormat, fp8_format, quantize_groups, scale_format


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_groups(x, block, fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant"))


def dequant(y: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    # fp8 value (4 significant bits) times an fp32 scale, rounded once to fp32: equal to the float64 product rounded
    g = y.float().reshape(*y.shape[:-1], y.shape[-1] // block, block)
    return (g * s.unsqueeze(-1)).reshape(y.shape)


def weight_dequant(w: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    n, k = w.shape
    full = s.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return w.float() * full


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """Dequantize both operands (exact in fp32 up to one rounding of each
    product with its scale) and run one fp32 GEMM. Folding the scales into the
    operands reorders the per-block promotion of the contract; the difference
    is fp32 rounding, far below the bf16 output's resolution."""
    a32 = dequant(a, sa)
    b32 = weight_dequant(b, sb) if b.shape[0] else b.float()
    return (a32 @ b32.t()).to(torch.bfloat16)
