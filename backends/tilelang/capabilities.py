"""What each TileLang kernel serves. Calls outside these limits are refused
with the reason (the resolver may then fall back, visibly, to another backend).

The limits come from the tile programs, not from the CPU they execute on
here: the same program is the one lowered for sm_90a, gfx942 and gfx950.
"""
from __future__ import annotations

import torch

from ...core.capabilities import Capability
from ...tilelang_kernels.target import BUILD_TARGETS

FP8 = ("e4m3fn", "e4m3fnuz")
CPU = ("cpu",)  # executed through TileLang's c target; GPU targets are built, not run
ARCHS = BUILD_TARGETS

CAPABILITIES: dict[str, Capability] = {
    "act_quant": Capability(dtypes=(torch.bfloat16, torch.float32), fp8_formats=FP8, scale_formats=("fp32", "ue8m0"),
                            devices=CPU, archs=ARCHS, note="bf16/fp32 input, both FP8 and scale formats"),
    "rms_norm": Capability(dtypes=(torch.bfloat16, torch.float32), devices=CPU, archs=ARCHS,
                           note="bf16/fp32 input and weight; one row per program held in registers"),
    "fp8_gemm": Capability(fp8_formats=FP8, devices=CPU, archs=ARCHS,
                           note="128x128 weight blocks, BK = 128; bf16 output"),
    "indexer_logits": Capability(dtypes=(torch.bfloat16,), fp8_formats=FP8, heads=tuple(range(1, 129)), devices=CPU, archs=ARCHS,
                                 note="bf16 or fp8 q/k; H <= 128 is the GEMM's N tile, padded to a multiple of 8 with zero-weight heads"),
    "topk_select": Capability(topk_max=4096, devices=CPU, archs=ARCHS,
                              note="k at most 4096 (the picks are staged in shared memory); NaN ranks above +inf, as in torch.sort"),
    "sparse_mla_prefill": Capability(dtypes=(torch.bfloat16,), heads=(16, 32, 64, 128), topk_multiple=64, devices=CPU, archs=ARCHS,
                                     note="bf16; heads in blocks of up to 64 (one wgmma M tile); topk a multiple of BI = 64"),
}
