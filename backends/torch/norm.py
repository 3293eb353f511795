"""RMSNorm (optionally fused with the residual add) and LayerNorm, in fp32."""
from __future__ import annotations

import torch


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    h = x.float()
    if residual is not None:
        h = h + residual.float()
    y = (h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps) * w.float()).to(x.dtype)
    return y if residual is None else (y, h.to(x.dtype))


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    h = x.float()
    return torch.nn.functional.layer_norm(h, h.shape[-1:], w.float(), b.float(), eps).to(x.dtype)
