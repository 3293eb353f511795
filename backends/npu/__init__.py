"""The npu backend: dsport ops over torch_npu's fused Ascend kernels.

The adapters (``dsport.npu_kernels.adapters``) translate dsport's layouts to
the NPU's (split bf16 latent / rope cache, valid-first indices, TND prefix
sums, softmax max/sum -> lse) and call ``npu_sparse_flash_attention``,
``npu_rms_norm`` / ``npu_add_rms_norm``, ``npu_rotary_mul``,
``npu_moe_gating_top_k`` and ``npu_grouped_matmul``. Where no NPU is visible, conformance
runs the same adapters over contract models of those ops
(``dsport.npu_kernels.contract_models``): verdict ``contract``, never ``pass``.

torch_npu is never imported by loading this module. ``available()`` first
imports it in a child process (a torch_npu without Ascend's CANN libraries
can abort the interpreter), with ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` so that
torch itself does not load it on ``import torch``; only a clean probe lets
this process import it.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import subprocess
import sys
from functools import lru_cache
from typing import Any

import torch

from ...core.capabilities import Capability, Limit, Rule
from ...core.errors import BackendUnavailable
from ...npu_kernels import adapters

NAME = "npu"
DESCRIPTION = ("Ascend NPU via torch_npu: npu_sparse_flash_attention (MLA-absorb, TND / PA_BSND), npu_rms_norm / "
               "npu_add_rms_norm, npu_rotary_mul, npu_moe_gating_top_k, npu_grouped_matmul (MoE GEMMs and experts); CPU inputs are moved to the NPU and back")
PRECISION = ("bf16/fp16 q and KV; the 656-byte FP8 cache is widened to the split bf16 cache exactly (ue8m0 scales); "
             "softmax statistics fp32, lse = softmax_max + ln(softmax_sum); rms_norm in fp32 with gamma in x's dtype; "
             "rope tables (angle in fp32) rounded to x's dtype; gate GEMM and routing in fp32")
TORCH_NPU_VERSION = "2.13.0"  # the schemas the adapters are written against (tests/test_npu_schema.py)

_SFA = "npu_sparse_flash_attention"
_HEADS = (1, 2, 4, 8, 16, 32, 64, 128)  # README: "N1支持1/2/4/8/16/32/64/128"
_PAGES = tuple(range(16, 1025, 16))     # README: "block_size取值为16的倍数，且最大支持1024"
# the limits the adapters (npu_kernels/adapters.py) refuse at call time, declared so refusal() answers first
_MLA = (Limit("DQK", values=(576,)), Limit("d_v", values=(512,)))  # npu_sparse_flash_attention: D 512 + rope 64, V = the latent
_GATE_GROUPS = (  # npu_moe_gating_top_k (torch_npu _op_plugin_docs.py)
    Rule("more than 2 experts per group", lambda d: d["E"] // d["n_group"] > 2, ("E", "n_group")),
    Rule("align32(E / n_group) * n_group <= 2048", lambda d: -(-(d["E"] // d["n_group"]) // 32) * 32 * d["n_group"] <= 2048,
         ("E", "n_group")),
)
CAPABILITIES = {
    "sparse_mla_prefill": Capability(
        dtypes=(torch.bfloat16, torch.float16), heads=_HEADS, limits=_MLA,
        note=f"{_SFA}(layout_query='TND', layout_kv='TND', attention_mode=2, sparse_mode=0); D 512 + rope 64 only"),
    "sparse_mla_decode": Capability(
        dtypes=(torch.bfloat16, torch.float16), heads=_HEADS, page_sizes=_PAGES, limits=_MLA,
        note=f"{_SFA}(layout_query='TND', layout_kv='PA_BSND', attention_mode=2, sparse_mode=0) over the split bf16 "
             "cache (the 656-byte FP8 cache is translated first); D 512 + rope 64 only"),
    "rms_norm": Capability(dtypes=(torch.float16, torch.bfloat16, torch.float32),
                           note="npu_rms_norm; with residual npu_add_rms_norm"),
    "rope": Capability(dtypes=(torch.float16, torch.bfloat16, torch.float32), limits=(Limit("D", max=895), Limit("H", max=999)),
                       note="npu_rotary_mul(rotary_mode='interleave' | 'half') on [1, T, H, D] with 1S1D cos / sin in x's dtype"),
    **{op: Capability(dtypes=(torch.float16, torch.bfloat16, torch.float32),
                      note="npu_grouped_matmul(split_item=3, group_type=0, group_list_type=1) over rows sorted by group; "
                           "b transposed to the op's [G, K, N]")
       for op in ("moe_grouped_gemm_contiguous", "moe_grouped_gemm_masked")},
    "moe_experts": Capability(dtypes=(torch.float16, torch.bfloat16, torch.float32),
                              note="(token, slot) pairs sorted by expert; npu_grouped_matmul for w1 and w3, silu * mul in "
                                   "fp32, npu_grouped_matmul for w2, weighted index_add in fp32"),
    "moe_gate": Capability(limits=(Limit("E", max=2048),), rules=_GATE_GROUPS, note="gate GEMM in fp32, then npu_moe_gating_top_k(norm_type=1 sigmoid | 0 softmax, "
                                "group_select_mode=1 top-2 sum with bias | 0 max without); E <= 2048, > 2 experts per group"),
}

_FUSED = ("npu_lightning_indexer fuses indexer logits with top-k and returns indices (its values are bf16/fp16 and "
          "training-only), so this spec op has no NPU kernel of its own; the fused pair is "
          "dsport.npu_kernels.adapters.lightning_indexer_topk, checked in tests/test_npu_adapters.py")
NOT_SERVED = {
    "indexer_logits": _FUSED,
    "topk_select": _FUSED,
    "indexer_logits_paged": "npu_lightning_indexer (layout_key='PA_BSND') fuses top-k and reads a bf16 key cache, "
                            "not the 132-byte FP8 one; no fp32 logits",
    "act_quant": "not adapted: npu_dynamic_quant quantizes per row with scale amax / DTYPE_MAX (no amax floor, no ue8m0 "
                 "rounding), to int8 on A3 (fp8 outputs only on Ascend 950); a [.., N / 128, 128] view would make its "
                 "rows dsport's groups, but the scales would still differ from dsport's bit-exact contract",
    "dequant": "no NPU kernel: elementwise, served by the torch fallback",
    "weight_dequant": "no NPU kernel: elementwise, served by the torch fallback",
    "fp8_gemm": "not adapted yet: npu_quant_matmul (per-channel / per-token scales) would be the candidate; its "
                "128x128 block-scaled FP8 form is not checked here",
    "layer_norm": "not adapted yet: torch's layer_norm runs on the NPU through the torch fallback",
    "yarn_freqs": "a table, built once: torch fallback",
    "hadamard": "no NPU kernel: a 128x128 matmul, served by the torch fallback",
    "index_cache_pack": "the NPU indexer reads a bf16 (or int8 on A3) key cache, not this FP8 layout",
    "index_cache_unpack": "the NPU indexer reads a bf16 (or int8 on A3) key cache, not this FP8 layout",
    "mla_cache_pack": "the NPU keeps the split bf16 cache; dsport.npu_kernels.layouts.join_mla_cache translates",
    "mla_cache_unpack": "the NPU keeps the split bf16 cache; dsport.npu_kernels.layouts.split_mla_cache translates",
    "mla_prefill_dense": "not adapted yet: npu_fusion_attention (sparse_mode 3, TND) would serve it",
    "mla_decode_dense": "not adapted yet: npu_fused_infer_attention_score would serve it",
}

_PROBE = ("import torch, torch_npu; n = torch.npu.device_count() if torch.npu.is_available() else 0; "
          "print(torch_npu.__version__, n, torch.npu.get_device_name(0) if n else '')")


@lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    if importlib.util.find_spec("torch_npu") is None:
        return False, "torch_npu is not installed (an Ascend NPU with CANN and torch_npu is needed)"
    env = {**os.environ, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"}
    try:
        r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return False, "importing torch_npu did not finish in 120 s"
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        hint = ("" if os.environ.get("TORCH_DEVICE_BACKEND_AUTOLOAD") == "0" else
                "; set TORCH_DEVICE_BACKEND_AUTOLOAD=0 so that `import torch` does not load it for other backends")
        return False, f"torch_npu is installed but does not import (CANN missing or mismatched?): {tail}{hint}"
    version, count, device = (r.stdout.strip().split(" ", 2) + ["", "", ""])[:3]
    if int(count or 0) == 0:
        return False, f"torch_npu {version} imports but sees no NPU"
    return True, f"torch_npu {version} on {count} NPU(s): {device}"


class _TorchNpu:
    """torch_npu, imported at the first vendor call (after ``available()`` said yes)."""

    def __getattr__(self, name: str) -> Any:
        ok, why = available()
        if not ok:
            raise BackendUnavailable(f"npu backend: {why}")
        return getattr(importlib.import_module("torch_npu"), name)


def _on_npu(fn: Any) -> Any:
    """Inputs on another device (conformance builds its cases on the CPU) go to the NPU and the
    outputs come back; tensors already on the NPU pass through untouched."""
    def run(*args: Any, **kwargs: Any) -> Any:
        ok, why = available()
        if not ok:
            raise BackendUnavailable(f"npu backend, {fn.__name__}: {why}")
        home = next((v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)), None)
        if home is None or home.type == "npu":
            return fn(*args, **kwargs)
        def there(v: Any) -> Any:
            return v.to("npu") if isinstance(v, torch.Tensor) else v
        def back(v: Any) -> Any:
            return v.to(home) if isinstance(v, torch.Tensor) else v
        out = fn(*map(there, args), **{k: there(v) for k, v in kwargs.items()})
        return tuple(map(back, out)) if isinstance(out, tuple) else back(out)
    return functools.wraps(fn)(run)


OPS = {op: _on_npu(fn) for op, fn in adapters.make_ops(_TorchNpu()).items()}


def contract_ops() -> dict:
    from ...npu_kernels import contract_models

    return adapters.make_ops(contract_models)
