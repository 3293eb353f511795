"""Per-device choices of the torch backend: the dtype matmuls run in and the
working-set budget that sizes query blocks.

Matmul dtype: on a CPU the operands are always widened to fp32. A torch
matmul of half-precision tensors returns a half-precision tensor: it
accumulates in fp32 but rounds its *output*, so attention logits come out
rounded to bf16 before the fp32 softmax the contract asks for (measured on a
CPU with AVX512-BF16: 0.012 peak-relative error in FP8-cache sparse decode,
over the 0.0078 bf16 bound); on CPUs without bf16 matrix units such a matmul
is also one to two orders of magnitude slower than fp32. On accelerators the
half-precision inputs go to the tensor cores and the same output rounding
applies; that path has not been judged against the bounds on hardware (no
GPU here). Softmax, lse, silu*mul and every reduction the spec marks fp32 run
in fp32 on every device.
"""
from __future__ import annotations

import torch

HALF = (torch.bfloat16, torch.float16)

WORKSET_BYTES = 64 << 20
"""Bytes one query block may hold in intermediates (gathered KV rows, score
tiles). 64 MiB keeps a block inside a large last-level cache on CPU and is a
sliver of accelerator memory; peak memory is O(block) instead of O(T)."""


def matmul_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype operands of a matmul are cast to on ``device``."""
    if dtype == torch.float64:
        return torch.float64
    if dtype in HALF and device.type != "cpu":
        return dtype
    return torch.float32


def describe() -> str:
    cpu = "bf16/fp16 matmuls on CPU run in fp32 (torch's CPU half matmuls round their outputs to half precision)"
    return f"{cpu}; on accelerators half-precision matmuls use the tensor cores with fp32 accumulation"


def rows_per_block(bytes_per_row: int, budget: int = WORKSET_BYTES) -> int:
    """How many rows (queries) fit in one block of ``budget`` bytes (at least 1)."""
    return max(1, budget // max(1, bytes_per_row))
