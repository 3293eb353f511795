"""Lightning indexer logits, the first stage of DSA (SPEC §4)."""
from __future__ import annotations

import torch

from dsport.core.fp8 import FP8_FORMATS, Fp8Format
from dsport.core.spec import DTYPE_GROUPS, Check, OpSpec, Output, Param, Tensor, register

SRC = "DeepGEMM fp8_mqa_logits / fp8_paged_mqa_logits; DeepSeek-V3.2-Exp inference/kernel.py fp8_index"


def _fp8_pair(a, d) -> bool:
    q8, k8 = a["q"].dtype in DTYPE_GROUPS["fp8"], a["k"].dtype in DTYPE_GROUPS["fp8"]
    return q8 == k8 and (a["k_scale"] is not None) == k8 and (not q8 or a["q"].dtype == a["k"].dtype)


def _bounds_ok(a, d) -> bool:
    ks, ke = a["ks"], a["ke"]
    return ks.numel() == 0 or bool(((ks >= 0) & (ks <= ke) & (ke <= d["S"])).all())


FP8_RULE = Check("k_scale", "q and k both float, or both the same fp8 dtype with k_scale given",
                 _fp8_pair, lambda a, d: f"q {a['q'].dtype}, k {a['k'].dtype}, k_scale {'given' if a['k_scale'] is not None else 'None'}")
BOUNDS_RULE = Check("ke", "0 <= ks[t] <= ke[t] <= S", _bounds_ok,
                    lambda a, d: f"ks in [{int(a['ks'].min())}, {int(a['ks'].max())}], ke in [{int(a['ke'].min())}, {int(a['ke'].max())}], S={d['S']}")

indexer_logits = register(OpSpec(
    name="indexer_logits", family="dsa",
    summary="I[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s]) for s in [ks[t], ke[t]), -inf elsewhere.",
    args=(Tensor("q", ("T", "H", "D"), ("float", "fp8")), Tensor("k", ("S", "D"), ("float", "fp8")),
          Tensor("weights", ("T", "H"), ("float",), doc="all factors folded in: w * H^-0.5 * D^-0.5 * q_scale"),
          Tensor("ks", ("T",), ("int32",)), Tensor("ke", ("T",), ("int32",)),
          Tensor("k_scale", ("S",), ("fp32",), optional=True)),
    outputs=(Output("logits", ("T", "S"), torch.float32),),
    checks=(FP8_RULE, BOUNDS_RULE),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["T"] * d["S"] * d["H"] * d["D"],
))


def _paged_bounds(a, d) -> bool:
    bt, sl = a["block_table"], a["seqlens"]
    return sl.numel() == 0 or bool(((sl >= 0) & (sl <= d["MB"] * d["BS"])).all() and ((bt >= -1) & (bt < d["NB"])).all())


indexer_logits_paged = register(OpSpec(
    name="indexer_logits_paged", family="dsa",
    summary="Decode-time indexer over the paged FP8 key cache (per block: BS x 128 fp8 bytes, then BS fp32 scales): "
            "logits[b, p] for logical position p < seqlens[b], -inf beyond.",
    args=(Tensor("q", ("B", "H", "D"), ("fp8",)), Tensor("k_cache", ("NB", "BS", 132), ("uint8",)),
          Tensor("weights", ("B", "H"), ("float",)), Tensor("block_table", ("B", "MB"), ("int32",)),
          Tensor("seqlens", ("B",), ("int32",))),
    outputs=(Output("logits", ("B", "MB * BS"), torch.float32),),
    checks=(Check("q", "D == 128 (the cache stores 128-dim keys)", lambda a, d: d["D"] == 128, lambda a, d: d["D"]),
            Check("seqlens", "0 <= seqlens[b] <= MB * BS and block_table entries in [-1, NB)", _paged_bounds,
                  lambda a, d: f"seqlens max {int(a['seqlens'].max()) if a['seqlens'].numel() else '-'}, MB*BS={d['MB'] * d['BS']}")),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["B"] * d["MB"] * d["BS"] * d["H"] * d["D"],
))

FMT = Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS))

index_cache_pack = register(OpSpec(
    name="index_cache_pack", family="cache",
    summary="Quantize indexer keys per token (ue8m0, one 128-group) into paged blocks: BS x 128 fp8 bytes, then BS fp32 scales.",
    args=(Tensor("k", ("NB", "BS", 128)), FMT),
    outputs=(Output("cache", ("NB", "BS", 132), torch.uint8),),
    metric="exact", source="DeepGEMM fp8_paged_mqa_logits key-cache layout",
))

index_cache_unpack = register(OpSpec(
    name="index_cache_unpack", family="cache",
    summary="Inverse of index_cache_pack: bytes -> (k fp8 [NB, BS, 128], k_scale fp32 [NB, BS]).",
    args=(Tensor("cache", ("NB", "BS", 132), ("uint8",)), FMT),
    outputs=(Output("k", ("NB", "BS", 128), lambda a: FP8_FORMATS[str(a["fmt"])].dtype), Output("k_scale", ("NB", "BS"), torch.float32)),
    metric="exact", source="DeepGEMM fp8_paged_mqa_logits key-cache layout",
))
