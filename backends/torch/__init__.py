"""The torch backend: every op in tensor ops only, on any device PyTorch
supports (CPU, CUDA, ROCm, Ascend via torch_npu, XPU). It is the fallback for
ops a hardware backend lacks and the speed baseline kernels must beat.

DSA is genuinely sparse (only the selected KV rows are gathered), the indexer
works in query blocks (O(block * S) memory), FP8 is emulated through torch
float8 storage dtypes where the device lacks FP8 units (bit-exact with the
quant-mimicking reference), and MoE sorts tokens per expert.
"""
from __future__ import annotations

import torch

from . import attention, dispatch, indexer, mla_cache, moe, norm, policy, quant, rotary, topk
from ...core.capabilities import Capability

NAME = "torch"
DESCRIPTION = "portable PyTorch tensor ops on any torch device; sparse DSA, blocked indexer, sorted-token MoE"
PRECISION = ("outputs in the spec's dtypes; softmax/lse, norms, silu*mul and indexer logits in fp32; "
             + policy.describe())

OPS = {
    "act_quant": quant.act_quant,
    "dequant": quant.dequant,
    "weight_dequant": quant.weight_dequant,
    "fp8_gemm": quant.fp8_gemm,
    "rms_norm": norm.rms_norm,
    "layer_norm": norm.layer_norm,
    "yarn_freqs": rotary.yarn_freqs,
    "rope": rotary.rope,
    "hadamard": rotary.hadamard,
    "indexer_logits": indexer.indexer_logits,
    "indexer_logits_paged": indexer.indexer_logits_paged,
    "index_cache_pack": indexer.index_cache_pack,
    "index_cache_unpack": indexer.index_cache_unpack,
    "topk_select": topk.topk_select,
    "sparse_mla_prefill": attention.sparse_mla_prefill,
    "sparse_mla_decode": attention.sparse_mla_decode,
    "mla_prefill_dense": attention.mla_prefill_dense,
    "mla_decode_dense": attention.mla_decode_dense,
    "mla_cache_pack": mla_cache.mla_cache_pack,
    "mla_cache_unpack": mla_cache.mla_cache_unpack,
    "moe_gate": moe.moe_gate,
    "moe_experts": moe.moe_experts,
    "moe_grouped_gemm_contiguous": moe.moe_grouped_gemm_contiguous,
    "moe_grouped_gemm_masked": moe.moe_grouped_gemm_masked,
    "moe_grouped_fp8_gemm_contiguous": moe.moe_grouped_fp8_gemm_contiguous,
    "moe_grouped_fp8_gemm_masked": moe.moe_grouped_fp8_gemm_masked,
    "moe_dispatch": dispatch.moe_dispatch,
    "moe_combine": dispatch.moe_combine,
}

_MATMUL_NOTE = "matmul operands: " + policy.describe()
CAPABILITIES = {op: Capability(note=_MATMUL_NOTE) for op in (
    "sparse_mla_prefill", "sparse_mla_decode", "mla_prefill_dense", "mla_decode_dense",
    "moe_experts", "moe_grouped_gemm_contiguous", "moe_grouped_gemm_masked")}
CAPABILITIES.update({
    "fp8_gemm": Capability(note="blocked: the weight widened to fp32 one N-tile at a time, one fp32 partial sum per 128-block, then scaled; CUDA sm_90 with CUDA >= 12.9: torch's block-scaled FP8 scaled_mm (not run here)"),
    **{op: Capability(note="one blocked fp8_gemm per group that has rows: only that expert's FP8 weight is read, widened one N-tile at a time")
       for op in ("moe_grouped_fp8_gemm_contiguous", "moe_grouped_fp8_gemm_masked")},
    "indexer_logits": Capability(note="fp32 GEMMs per query block; FP8 q/k widened exactly to fp32"),
    "indexer_logits_paged": Capability(note="gathers only the blocks in block_table; fp32 GEMMs"),
    "rope": Capability(note="angles in float64 (float32 on MPS, which lacks float64)"),
})


def available() -> tuple[bool, str]:
    return True, f"pure PyTorch {torch.__version__}; runs on any torch device"
