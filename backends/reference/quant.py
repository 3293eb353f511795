"""Reference FP8 quantization. Scale arithmetic is float32 by contract (see
dsport.core.fp8); products and sums are float64."""
from __future__ import annotations

import torch

from ...core.fp8 import Fp8Format, ScaleFormat, fp8_format, quantize_groups, scale_format


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_groups(x, block, fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant"))


def dequant(y: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    g = y.double().reshape(*y.shape[:-1], y.shape[-1] // block, block)
    return (g * s.double().unsqueeze(-1)).reshape(y.shape).float()


def weight_dequant(w: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    n, k = w.shape
    full = s.double().repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return (w.double() * full).float()


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    a_blk = a.double().reshape(m, k // 128, 128)
    b_blk = b.double().reshape(n, k // 128, 128)
    partial = torch.einsum("mkc,nkc->mnk", a_blk, b_blk)  # one fp32-promoted partial sum per 128-block
    sbn = sb.double().repeat_interleave(128, 0)[:n]  # [N, K/128]
    return (partial * sa.double()[:, None, :] * sbn[None, :, :]).sum(-1)
