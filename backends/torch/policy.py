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

WORKSET_BYTES = {"cpu": 4 << 20}
"""Bytes one query block may hold in intermediates (gathered KV rows, score
tiles), per device type. On CPU the budget is what a core's caches hold: the
blocks stream through several passes (matmul, relu, head sum, mask), and a
block that spills to DRAM pays for every one. Measured on a 2 MiB-L2, 32 MiB-L3
EPYC at the vs_transformers prefill (2048 tokens, 16 index heads): 64 MiB
blocks ran the model's prefill in 1.89 s, 16 MiB in 1.49 s, 4 MiB in 1.38 s.
Other devices keep 64 MiB (a sliver of accelerator memory, large enough to
fill the device; not tuned on hardware, none here). Peak memory is O(block)
instead of O(T) either way."""
ACCELERATOR_WORKSET_BYTES = 64 << 20


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


def workset_bytes(device: torch.device) -> int:
    """The working-set budget of one block on ``device`` (read at call time, so a test can shrink it)."""
    return WORKSET_BYTES.get(device.type, ACCELERATOR_WORKSET_BYTES)


def rows_per_block(bytes_per_row: int, device: torch.device, budget: int | None = None) -> int:
    """How many rows (queries) fit in one block of ``budget`` bytes (default: ``device``'s working set; at least 1)."""
    return max(1, (budget or workset_bytes(device)) // max(1, bytes_per_row))
