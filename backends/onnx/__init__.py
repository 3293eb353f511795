"""The onnx backend: every op an ONNX graph of standard operators, run by ONNX Runtime.

ONNX is the exchange format that accelerator toolchains without a PyTorch
backend ingest (ONNX Runtime's CUDA, ROCm/MIGraphX, CANN, OpenVINO and QNN
execution providers, TensorRT), so these graphs are a route to hardware;
ONNX Runtime's CPU kernels make them an independent executor whose numerics
are checked here. One graph per (op, shapes, dtypes, attributes), checked
by ``onnx.checker`` and turned into a cached ``InferenceSession``
(:mod:`dsport.backends.onnx.runtime`). Opset, execution providers and threads
are the ``onnx:`` section of a config file (:mod:`dsport.backends.onnx.options`),
each overridden by its ``DSPORT_ONNX_*`` environment variable.
"""
from __future__ import annotations

from typing import Any

from ...core.capabilities import Capability
from .options import OPTIONS

NAME = "onnx"
DESCRIPTION = "ONNX graphs of standard operators (opset 21) run by ONNX Runtime; CPU execution provider by default"
PRECISION = ("inputs widened to fp32 inside the graph (exact from bf16 and FP8); MatMul, softmax/lse, norms, "
             "silu*mul and indexer logits in fp32, RoPE angles in float64; FP8 by ONNX Cast(saturate=1) to "
             "float8e4m3fn/float8e4m3fnuz (round to nearest even); ue8m0 scales by an exact exponent search")

try:
    import onnx as _onnx
    import onnxruntime as _ort

    from . import dsa, moe, norm, quant, rotary, runtime
    _IMPORT_ERROR: str | None = None
except ImportError as e:  # reported by available(), never raised at import
    _onnx = _ort = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e} (install the extra: pip install 'dsport[onnx]')"

OPS = {} if _IMPORT_ERROR else {
    "act_quant": quant.act_quant,
    "dequant": quant.dequant,
    "weight_dequant": quant.weight_dequant,
    "fp8_gemm": quant.fp8_gemm,
    "rms_norm": norm.rms_norm,
    "layer_norm": norm.layer_norm,
    "yarn_freqs": rotary.yarn_freqs,
    "rope": rotary.rope,
    "hadamard": rotary.hadamard,
    "indexer_logits": dsa.indexer_logits,
    "indexer_logits_paged": dsa.indexer_logits_paged,
    "index_cache_pack": dsa.index_cache_pack,
    "index_cache_unpack": dsa.index_cache_unpack,
    "topk_select": dsa.topk_select,
    "sparse_mla_prefill": dsa.sparse_mla_prefill,
    "sparse_mla_decode": dsa.sparse_mla_decode,
    "mla_cache_pack": dsa.mla_cache_pack,
    "mla_cache_unpack": dsa.mla_cache_unpack,
    "mla_prefill_dense": dsa.mla_prefill_dense,
    "mla_decode_dense": dsa.mla_decode_dense,
    "moe_gate": moe.moe_gate,
    "moe_experts": moe.moe_experts,
    "moe_grouped_gemm_contiguous": moe.moe_grouped_gemm_contiguous,
    "moe_grouped_gemm_masked": moe.moe_grouped_gemm_masked,
}

_CPU = ("cpu",)  # inputs and outputs are bound as host memory; a device provider copies in and out itself
_NOTES = {
    "act_quant": "Cast(saturate=1) to FP8; ue8m0 exponent found by an exact search of the float32 powers of two",
    "fp8_gemm": "one fp32 MatMul per 128-wide K block, scaled by sa*sb and summed (the contract's promotion order); "
                "memory KB*M*N fp32",
    "indexer_logits": "one fp32 MatMul over all T*H query rows: memory T*H*S fp32 (no query blocking in a static graph)",
    "indexer_logits_paged": "FP8 codes decoded by a 256-entry table Gather, fp32 scales rebuilt exactly from their "
                            "bytes by integer arithmetic (ONNX has no bitcast); unused positions zeroed by Where",
    "index_cache_pack": "FP8 codes and fp32 scale bytes written exactly by integer arithmetic on the exponent "
                        "and significand (no bitcast in ONNX)",
    "mla_cache_pack": "FP8 codes, fp32 scale bytes and bf16 rope bytes (ONNX Cast to bf16, nearest even) written "
                      "exactly by integer arithmetic",
    "index_cache_unpack": "FP8 codes by table Gather, fp32 scales from bytes by integer arithmetic (no bitcast in ONNX)",
    "topk_select": "ONNX TopK; its lower-index-first tie rule is the lowest-position-first rule of the torch backend",
    "sparse_mla_prefill": "Gather of the named rows with clamped indices, masked by Where before both MatMuls",
    "sparse_mla_decode": "gathers the named cache rows, then decodes only those (656-byte FP8 rows: FP8 by table, "
                         "fp32 scales and bf16 rope from bytes by integer arithmetic); masked by Where before the MatMuls",
    "mla_cache_unpack": "FP8 by table Gather; fp32 scales and bf16 (as the upper half of an fp32) from bytes, exactly",
    "mla_prefill_dense": "full [H, T, S] fp32 scores with a causal Where mask",
    "mla_decode_dense": "gathers the block table's pages; rows past cache_seqlens or on -1 pages zeroed by Where",
    "moe_experts": "every expert on every token ([E, T, I] fp32, E/K x the useful FLOPs: no data-dependent "
                   "segments in a static graph); unselected pairs zeroed by Where",
    "moe_grouped_gemm_contiguous": "one MatMul per 128-row tile with that tile's group",
}
CAPABILITIES = {op: Capability(devices=_CPU, note=_NOTES.get(op, "")) for op in OPS}

NOT_SERVED: dict[str, str] = {}


def configure(options: dict[str, Any]) -> None:
    """The validated ``onnx:`` options (see OPTIONS), handed over by the registry."""
    if _IMPORT_ERROR is None:
        runtime.configure(options["opset"], options["providers"], options["threads"])


def available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, f"onnx/onnxruntime not importable: {_IMPORT_ERROR}"
    if runtime.SETTINGS_ERROR:
        return False, runtime.SETTINGS_ERROR
    s = runtime.SETTINGS
    have = _ort.get_available_providers()
    missing = [p for p in s.providers if p not in have]
    if missing:
        return False, f"onnxruntime {_ort.__version__} lacks execution provider(s) {missing}; it has {have}"
    if s.opset < runtime.MIN_OPSET:
        return False, f"opset {s.opset} < {runtime.MIN_OPSET}: no saturating FP8 Cast / FP8 types in every op used"
    return True, f"onnx {_onnx.__version__}, onnxruntime {_ort.__version__}, opset {s.opset}, providers {list(s.providers)}"
