"""The hip backend: AMD MI350 (gfx950) and MI300 (gfx942).

Two kinds of implementation, one op table:

* **aiter adapters** (:mod:`.aiter`) for the ops aiter serves — the indexer
  logits (``fp8_mqa_logits``, ``deepgemm_fp8_paged_mqa_logits`` with its
  page-size-1 per-token cache), top-k (``top_k_per_row_prefill``), the
  block-scaled GEMM (``gemm_a8w8_blockscale``), sparse decode
  (``mla_decode_fwd`` over per-query kv lists) and the routed experts
  (``fused_moe``). Where aiter cannot be
  imported, conformance runs them against contract models (``contract``).
* **dsport's own kernels** (``hip_kernels/``, launched by :mod:`.launch`
  through hip-python) for the rest: act_quant, rms_norm, moe_gate,
  sparse_mla_prefill, mla_cache_pack. They build here for both targets
  (``dsport build --backend hip --target gfx950|gfx942``: ``built``); their
  scalar arithmetic is checked on the CPU (tests/test_hip_host.py); nothing of
  them has run on a device.

The FP8 flavour is the target's (:func:`dsport.core.fp8.format_for_arch`):
e4m3fnuz on gfx942, e4m3fn on gfx950, chosen once per process
(:func:`.aiter.arch`: ``DSPORT_HIP_ARCH``, the device, or gfx942).
"""
from __future__ import annotations

import importlib.util

import torch

from . import aiter as _aiter
from .aot import TARGETS, build
from ...core.capabilities import Capability, Limit
from ...core.fp8 import format_for_arch

NAME = "hip"
ARCH = _aiter.arch()
FP8 = format_for_arch(ARCH)
DESCRIPTION = (f"AMD {ARCH}: aiter adapters (contract models where aiter is absent) + dsport's HIP kernels "
               "(hip_kernels/, built for gfx950 and gfx942 with ziglang's clang)")
PRECISION = (f"FP8 in {FP8} (the {ARCH} flavour; gfx942 operands in e4m3fn are mapped exactly onto fnuz, scale x2, "
             "0x80 -> 0x00); fp32 accumulation; fp8 GEMM partial sums promoted per 128-block; attention P in bf16")

#: the formats an adapter maps exactly onto the target's: fn -> fnuz is exact, fnuz -> fn is not
_MAPPABLE = ("e4m3fn", "e4m3fnuz") if FP8.name == "e4m3fnuz" else ("e4m3fn",)
_ADAPTER_NOTE = f"aiter on {ARCH}: kernels read {FP8} bytes"
CAPABILITIES = {
    # dtypes=(): no float q/k (fp8_mqa_logits takes fp8 operands; fp8 tensors are judged by fp8_formats)
    "indexer_logits": Capability(dtypes=(), fp8_formats=_MAPPABLE, archs=TARGETS, note=_ADAPTER_NOTE + "; fp8 q and k with k_scale"),
    "indexer_logits_paged": Capability(fp8_formats=_MAPPABLE, archs=TARGETS, note=_ADAPTER_NOTE + "; page-size-1 cache"),
    "fp8_gemm": Capability(fp8_formats=_MAPPABLE, archs=TARGETS, note=_ADAPTER_NOTE),
    "topk_select": Capability(archs=TARGETS, note="aiter top_k_per_row_prefill; absolute indices"),
    "moe_experts": Capability(archs=TARGETS, note="aiter fused_moe, unquantized, gate/up fused as w13; -1 ids via expert_mask"),
    # aiter's MLA decode is hand-written assembly for the 576 / 512 latent: its kernel arguments carry no head
    # size and a kernel is picked by q/kv type, heads, page size and q length only (csrc/py_itfs_cu/asm_mla.cu);
    # the contract model would take any head dim, the device would not
    "sparse_mla_decode": Capability(dtypes=(torch.bfloat16,), archs=TARGETS, limits=(Limit("DQK", values=(576,)), Limit("d_v", values=(512,))),
                                    note="aiter mla_decode_fwd over dequantized bf16 rows, one kv list per query; "
                                         "d_qk 576, d_v 512"),
    # own kernels: one FP8 format per build (the target's), bf16 activations, the device only; the shape
    # limits are the launchers' (backends/hip/launch.py), which refuse the same cases at call time
    "act_quant": Capability(fp8_formats=(FP8.name,), devices=("cuda",), archs=TARGETS, limits=(Limit("block", values=(128,)),),
                            note="one 128-element group per quarter wave"),
    "mla_cache_pack": Capability(fp8_formats=(FP8.name,), devices=("cuda",), archs=TARGETS),
    "rms_norm": Capability(dtypes=(torch.bfloat16,), devices=("cuda",), archs=TARGETS, limits=(Limit("D", max=7168),),
                           note="one row per workgroup, staged in registers"),
    # moe_gate's topk is a param, not the spec dim k that Capability.topk_max reads: it is a Limit here
    "moe_gate": Capability(devices=("cuda",), archs=TARGETS, limits=(Limit("E", max=256), Limit("D", max=7168), Limit("n_group", max=31), Limit("topk", max=16)),
                           params={"score_func": ("sigmoid",)}, note="sigmoid scoring, E <= 256, D <= 7168"),
    "sparse_mla_prefill": Capability(dtypes=(torch.bfloat16,), devices=("cuda",), archs=TARGETS,
                                     limits=(Limit("DQK", values=(576,)), Limit("d_v", values=(512,))), note="d_qk 576, d_v 512"),
}
NOT_SERVED = {
    "moe_grouped_gemm_contiguous": "left to the fallback chain (triton, torch)",
    "moe_grouped_gemm_masked": "left to the fallback chain (triton, torch)",
    "mla_prefill_dense": "left to the fallback chain", "mla_decode_dense": "left to the fallback chain",
    "dequant": "left to the fallback chain", "weight_dequant": "left to the fallback chain",
    "layer_norm": "left to the fallback chain", "rope": "left to the fallback chain", "yarn_freqs": "left to the fallback chain",
    "hadamard": "left to the fallback chain", "index_cache_pack": "left to the fallback chain",
    "index_cache_unpack": "left to the fallback chain", "mla_cache_unpack": "left to the fallback chain",
}


def _missing() -> list[str]:
    out = []
    if getattr(torch.version, "hip", None) is None:
        out.append(f"torch is not a ROCm build (torch {torch.__version__})")
    elif not torch.cuda.is_available():
        out.append("no AMD GPU visible to torch")
    try:  # find_spec("hip") would also find any directory named hip on sys.path
        from hip import hip as _hip

        _hip.hipModuleLaunchKernel  # noqa: B018 - the API this backend launches with
    except Exception as e:  # noqa: BLE001 - ImportError, or the HIP runtime library failing to load
        out.append(f"hip-python is not usable ({type(e).__name__}; it launches hip_kernels/ code objects)")
    if importlib.util.find_spec("aiter") is None:
        out.append("aiter is not importable (it needs a ROCm install)")
    return out


def available() -> tuple[bool, str]:
    missing = _missing()
    if missing:
        return False, "; ".join(missing) + f"; kernels build for {'/'.join(TARGETS)} with `dsport build --backend hip`"
    return True, f"ROCm torch on {ARCH}, hip-python and aiter present"


def _ops() -> dict:
    from .launch import kernel_ops

    return {**kernel_ops(ARCH), **_aiter.aiter_ops(ARCH)}


# building the table imports nothing that is absent here: aiter and hip-python are imported at call time
OPS = _ops()


def contract_ops() -> dict:
    """The aiter adapters with every aiter call served by its contract model (see :mod:`.aiter`)."""
    return _aiter.make_ops(_aiter.ContractModel(ARCH), ARCH)


__all__ = ["NAME", "DESCRIPTION", "PRECISION", "OPS", "CAPABILITIES", "NOT_SERVED", "TARGETS", "build", "available",
           "contract_ops"]
