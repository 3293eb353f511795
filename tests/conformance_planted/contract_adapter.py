"""test-only: an adapter backend over a made-up vendor library, checked
through ``contract_ops`` as real FlashMLA/DeepGEMM/aiter/torch_npu adapters
are.

The "vendor" op ``vendor_rmsnorm(x, gamma, epsilon)`` returns ``(rstd, y)``,
rstd first: the adapter must reorder and drop rstd. Its contract model is a
float64 formula written here. The backend is never available (no such
library); with ``DSPORT_PLANTED_CLEAN=1`` unset, the adapter returns rstd in
place of y — the kind of output-order slip a real port makes — and must come
out ``fail``, while the clean adapter comes out ``contract``, never ``pass``.
"""
from __future__ import annotations

import os

import torch

NAME = "contract_adapter"
BUGGY = os.environ.get("DSPORT_PLANTED_CLEAN") != "1"


def _vendor_rmsnorm_model(x: torch.Tensor, gamma: torch.Tensor, epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Contract model of the made-up vendor op: (rstd [..., 1] fp32, y in x's dtype)."""
    xf = x.double()
    rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + epsilon)
    return rstd.float(), (xf * rstd * gamma.double()).to(x.dtype)


def _adapter(vendor):
    def rms_norm(x, w, eps=1e-6, residual=None):
        if residual is not None:
            raise NotImplementedError("the vendor op has no fused residual")
        rstd, y = vendor(x, w, epsilon=eps)
        return rstd.expand_as(y).to(y.dtype) if BUGGY else y
    return rms_norm


def available() -> tuple[bool, str]:
    return False, "the vendor library 'vendornorm' is not importable here"


OPS = {"rms_norm": _adapter(None)}


def contract_ops() -> dict:
    return {"rms_norm": _adapter(_vendor_rmsnorm_model)}
