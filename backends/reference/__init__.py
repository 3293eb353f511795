"""The float reference: clear float64 PyTorch for every op, the oracle every
other backend is judged against. Float outputs come back in float64 (the
reference is exempt from the output dtypes of the spec, which bind real
backends); FP8, integer and byte outputs come back bit-exact in their dtype.

FP8 ops here are the "quant-mimicking" reference: they take the same FP8
inputs a kernel takes and apply the same quantization, so FP8 kernels can be
checked tightly against them.
"""
from __future__ import annotations

from . import attention, dispatch, indexer, mla_cache, moe, norm, quant, rotary, topk

NAME = "reference"
DESCRIPTION = "float64 PyTorch, written for clarity; the oracle of conformance"
PRECISION = "float64 (quantization scale arithmetic in float32, as the contract says)"

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


def available() -> tuple[bool, str]:
    return True, "pure PyTorch; runs on any device"
