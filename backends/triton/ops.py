"""The op table of the Triton backend and what each kernel can serve."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import attention, indexer, moe, norm, quant, rotary
from .aot import TARGETS
from ...core.capabilities import Capability
from ...core.fp8 import FP8_FORMATS, SCALE_FORMATS
from ...core.spec import specs

ARCHS = TARGETS
FLOATS = (torch.float16, torch.bfloat16, torch.float32)  # no fp64: GPU dot/exp paths are fp32 at most

OPS: dict[str, Callable[..., Any]] = {
    "act_quant": quant.act_quant,
    "fp8_gemm": quant.fp8_gemm,
    "rms_norm": norm.rms_norm,
    "rope": rotary.rope,
    "indexer_logits": indexer.indexer_logits,
    "sparse_mla_prefill": attention.sparse_mla_prefill,
    "sparse_mla_decode": attention.sparse_mla_decode,
    "moe_grouped_gemm_contiguous": moe.moe_grouped_gemm_contiguous,
    "moe_experts": moe.moe_experts,
}

# What each kernel serves, beyond the op spec's own validation. Per-arch FP8:
# the element format a target computes in is core.fp8.format_for_arch
# (e4m3fn on sm_90a and gfx950, e4m3fnuz on gfx942); a kernel given the other
# format still runs here in the interpreter, and compiles, but is not native.
_LIMITS: dict[str, dict[str, Any]] = {
    "act_quant": dict(dtypes=FLOATS, fp8_formats=tuple(FP8_FORMATS), scale_formats=tuple(SCALE_FORMATS),
                      note="any group length (power of two) as block; rows tiled by 16"),
    "fp8_gemm": dict(fp8_formats=tuple(FP8_FORMATS),
                     note="tiles BM=64 BN=128 BK=128 (BK is the scale block); any M, N; K % 128 == 0"),
    "rms_norm": dict(dtypes=FLOATS, note="one row per program; D up to 65536 (one register tile)"),
    "rope": dict(dtypes=FLOATS, note="both pairings; strided x (e.g. the last 64 dims of a 192-dim head)"),
    "indexer_logits": dict(dtypes=FLOATS, fp8_formats=tuple(FP8_FORMATS),
                           note="one query token x 64 keys per program; all H heads in one tile (H <= 128 keeps it in "
                                "registers); key blocks outside [ks, ke) skip the product"),
    "sparse_mla_prefill": dict(dtypes=FLOATS,
                               note="64 heads x 64 gathered rows per step, any H and any k (tails masked); "
                                    "-1 and out-of-range indices contribute nothing"),
    "sparse_mla_decode": dict(dtypes=FLOATS, fp8_formats=tuple(FP8_FORMATS),
                              note="656-byte FP8 cache or a float cache; any page size (indices are block * BS + offset)"),
    "moe_grouped_gemm_contiguous": dict(dtypes=FLOATS, note="float operands; M-tiles of 64 inside 128-row segments"),
    "moe_experts": dict(dtypes=FLOATS, note="gate/up grouped GEMM with fused SwiGLU, then down; routing glue in PyTorch"),
}

_NO_KERNEL_REASON = "no Triton kernel: resolve with an explicit fallback (e.g. torch or reference)"


def capabilities(interpreted: bool) -> dict[str, Capability]:
    devices = ("cpu",) if interpreted else ("cuda",)  # ROCm torch reports AMD GPUs as "cuda" too
    return {op: Capability(devices=devices, archs=ARCHS, **lim) for op, lim in _LIMITS.items()}


def not_served() -> dict[str, str]:
    """Every spec'd op without a Triton kernel, with the reason."""
    return {op: _NO_KERNEL_REASON for op in specs() if op not in OPS}
