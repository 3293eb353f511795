"""Per-device choices of the torch backend: the dtype matmuls run in and the
working-set budget that sizes query blocks.

Matmul dtype: on accelerators the half-precision inputs go straight to the
tensor cores (they accumulate in fp32 internally). On a CPU without bf16/fp16
matrix units (no AMX, no AVX512-BF16) a half-precision batched matmul runs
one to two orders of magnitude slower than fp32, so there the operands are
widened to fp32 first. Either way softmax, lse, silu*mul and every reduction
the spec marks fp32 run in fp32.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

HALF = (torch.bfloat16, torch.float16)

WORKSET_BYTES = 64 << 20
"""Bytes one query block may hold in intermediates (gathered KV rows, score
tiles). 64 MiB keeps a block inside a large last-level cache on CPU and is a
sliver of accelerator memory; peak memory is O(block) instead of O(T)."""


@functools.cache
def cpu_has_half_matmul_units() -> bool:
    """True when the host CPU advertises AMX or AVX512-BF16/FP16 (Linux flags)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("amx_bf16", "avx512_bf16", "amx_fp16", "avx512_fp16"))


def matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype operands of a matmul are cast to on ``device``."""
    if dtype == torch.float64:
        return torch.float64
    if dtype in HALF and (device.type != "cpu" or cpu_has_half_matmul_units()):
        return dtype
    return torch.float32


def describe() -> str:
    cpu = "bf16/fp16 matmuls on CPU " + ("stay in half precision (AMX/AVX512-BF16 present)"
                                          if cpu_has_half_matmul_units() else "run in fp32 (no bf16 matrix units)")
    return f"{cpu}; on accelerators half-precision matmuls use the tensor cores with fp32 accumulation"


def rows_per_block(bytes_per_row: int, budget: int = WORKSET_BYTES) -> int:
    """How many rows (queries) fit in one block of ``budget`` bytes (at least 1)."""
    return max(1, budget // max(1, bytes_per_row))
