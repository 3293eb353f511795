"""Reference norms (SPEC §3), float64. The release computes them in float32;
float64 is the oracle those float32 kernels are measured against."""
from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """y = w * x * rsqrt(mean(x^2) + eps); with ``residual``, x is replaced by
    x + residual first and that sum is returned as the new residual."""
    h = x.double()
    if residual is not None:
        h = h + residual.double()
    y = w.double() * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))
    return y if residual is None else (y, h)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = (x - mean) * rsqrt(var + eps) * w + b with the biased variance
    (divide by D), as torch.nn.functional.layer_norm."""
    h = x.double()
    centered = h - h.mean(-1, keepdim=True)
    var = centered.pow(2).mean(-1, keepdim=True)
    return centered * torch.rsqrt(var + eps) * w.double() + b.double()
