"""MLA attention: sparse (DSA stage 3) and dense, prefill and decode (SPEC §6).

Layouts follow FlashMLA. The absorbed ("MQA") form has one shared latent KV
head of d_qk = 576 = 512 latent + 64 rope dims and d_v = 512; the first d_v
dims of each KV row are also the value. Batches are flattened with offset
indices: there is no batch dim in prefill, and causality lives in the indices.
"""
from __future__ import annotations

import torch

from dsport.core.fp8 import FP8_FORMATS, Fp8Format
from dsport.core.spec import Check, OpSpec, Output, Param, Tensor, register

SM_SCALE = Param("sm_scale", (float,), minimum=0.0, doc="softmax scale (192^-0.5 * mscale^2 in V3.2)")
D_V = Param("d_v", (int,), 512, minimum=1, doc="value dims: the first d_v dims of each KV row")
FLASHMLA = "FlashMLA flash_mla_sparse_fwd / flash_mla_with_kvcache"


def _index_rule(arg: str, limit: str) -> Check:
    def ok(a, d) -> bool:
        i = a[arg]
        return i.numel() == 0 or bool(((i >= -1) & (i < d[limit] if limit in d else i < eval(limit, {}, dict(d)))).all())

    return Check(arg, f"-1 (invalid) or an index in [0, {limit})", ok,
                 lambda a, d: f"values in [{int(a[arg].min())}, {int(a[arg].max())}]")


DV_RULE = Check("d_v", "d_v <= DQK", lambda a, d: a["d_v"] <= d["DQK"], lambda a, d: f"d_v={a['d_v']}, DQK={d['DQK']}")

sparse_mla_prefill = register(OpSpec(
    name="sparse_mla_prefill", family="dsa",
    summary="out[t, h] = softmax_j(q[t, h] . kv[idx[t, j]] * sm_scale) . kv[idx[t, j], :d_v] over valid indices; "
            "also lse (natural log) and max_logits. A row with no valid index: out 0, lse -inf.",
    args=(Tensor("q", ("T", "H", "DQK")), Tensor("kv", ("S", 1, "DQK")), Tensor("indices", ("T", 1, "k"), ("int32",)),
          SM_SCALE, D_V),
    outputs=(Output("out", ("T", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("T", "H"), torch.float32),
             Output("max_logits", ("T", "H"), torch.float32)),
    checks=(DV_RULE, _index_rule("indices", "S")),
    metric="attention", reduction="k", source=FLASHMLA,
    flops=lambda d: 2.0 * d["T"] * d["k"] * d["H"] * (d["DQK"] + d["d_v"]),
    bytes=lambda d: 2.0 * (d["T"] * d["H"] * (d["DQK"] + d["d_v"]) + min(d["S"], d["T"] * d["k"]) * d["DQK"]) + 4.0 * d["T"] * d["k"],
))


def _cache_rule(a, d) -> bool:
    c = a["kv_cache"]
    if c.dtype == torch.uint8:
        return d["W"] == 656 and d["DQK"] == 576 and a["d_v"] == 512
    return d["W"] == d["DQK"]


CACHE_RULE = Check("kv_cache", "a uint8 FP8 cache with W = 656 (then DQK = 576, d_v = 512), or a float cache with W = DQK",
                   _cache_rule, lambda a, d: f"{a['kv_cache'].dtype} cache with W={d['W']}, DQK={d['DQK']}, d_v={a['d_v']}")

sparse_mla_decode = register(OpSpec(
    name="sparse_mla_decode", family="dsa",
    summary="Sparse decode over a paged latent cache: indices = block * BS + offset (-1 invalid). The uint8 cache holds "
            "656 B per token: 512 fp8 latent (four 128-tiles), 4 fp32 tile scales, 64 bf16 rope values.",
    args=(Tensor("q", ("B", "SQ", "H", "DQK")), Tensor("kv_cache", ("NB", "BS", 1, "W"), ("float", "uint8")),
          Tensor("indices", ("B", "SQ", "k"), ("int32",)), SM_SCALE, D_V,
          Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS), doc="element format of a uint8 cache")),
    outputs=(Output("out", ("B", "SQ", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("B", "H", "SQ"), torch.float32)),
    checks=(DV_RULE, CACHE_RULE, _index_rule("indices", "NB * BS")),
    metric="attention", reduction="k", source=FLASHMLA,
    flops=lambda d: 2.0 * d["B"] * d["SQ"] * d["k"] * d["H"] * (d["DQK"] + d["d_v"]),
    bytes=lambda d: 2.0 * d["B"] * d["SQ"] * d["H"] * (d["DQK"] + d["d_v"]) + d["B"] * d["SQ"] * d["k"] * (d["W"] if d["W"] == 656 else 2 * d["W"]),
))

mla_prefill_dense = register(OpSpec(
    name="mla_prefill_dense", family="mla",
    summary="Causal MHA-form attention; query t sits at absolute position S - T + t (a cached prefix of S - T tokens) "
            "and attends keys 0..S-T+t. Returns out and lse.",
    args=(Tensor("q", ("T", "H", "DQK")), Tensor("k", ("S", "H", "DQK")), Tensor("v", ("S", "H", "DV")), SM_SCALE),
    outputs=(Output("out", ("T", "H", "DV"), lambda a: a["q"].dtype), Output("lse", ("T", "H"), torch.float32)),
    checks=(Check("k", "S >= T (queries are the last T positions)", lambda a, d: d["S"] >= d["T"], lambda a, d: f"S={d['S']}, T={d['T']}"),),
    metric="attention", reduction="S", source="DeepSeek-V3.2-Exp inference/model.py MLA (naive path); FlashAttention varlen contract",
    flops=lambda d: 2.0 * d["H"] * (d["DQK"] + d["DV"]) * (d["T"] * (d["S"] - d["T"]) + d["T"] * (d["T"] + 1) / 2),
))


def _seqlen_rule(a, d) -> bool:
    sl, bt = a["cache_seqlens"], a["block_table"]
    if sl.numel() == 0:
        return True
    return bool((sl <= d["MB"] * d["BS"]).all() and (sl >= (d["SQ"] if a["causal"] else 0)).all() and ((bt >= -1) & (bt < d["NB"])).all())


mla_decode_dense = register(OpSpec(
    name="mla_decode_dense", family="mla",
    summary="Dense absorbed-form decode over a paged float latent cache (block_table, cache_seqlens). With causal and "
            "SQ > 1, query i attends positions < cache_seqlens - SQ + 1 + i.",
    args=(Tensor("q", ("B", "SQ", "H", "DQK")), Tensor("kv_cache", ("NB", "BS", 1, "DQK")),
          Tensor("block_table", ("B", "MB"), ("int32",)), Tensor("cache_seqlens", ("B",), ("int32",)),
          SM_SCALE, D_V, Param("causal", (bool,), True)),
    outputs=(Output("out", ("B", "SQ", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("B", "H", "SQ"), torch.float32)),
    checks=(DV_RULE, Check("cache_seqlens", "SQ <= cache_seqlens[b] <= MB * BS (SQ only when causal), block_table in [-1, NB)",
                           _seqlen_rule, lambda a, d: f"cache_seqlens in [{int(a['cache_seqlens'].min())}, {int(a['cache_seqlens'].max())}], MB*BS={d['MB'] * d['BS']}")),
    metric="attention", reduction="MB * BS", source="FlashMLA flash_mla_with_kvcache (dense)",
    flops=lambda d: 2.0 * d["B"] * d["SQ"] * d["H"] * (d["DQK"] + d["d_v"]) * d["MB"] * d["BS"],
))
