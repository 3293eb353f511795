"""Mixture of experts: sigmoid gate with group-limited, bias-corrected
routing, expert SwiGLU MLPs, and the two grouped-GEMM layouts (SPEC §7)."""
from __future__ import annotations

import torch

from dsport.core.spec import Check, OpSpec, Output, Param, Tensor, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (Gate, MoE, Expert); DeepGEMM m_grouped_fp8_gemm_nt_contiguous/masked"


def _ids_rule(arg: str, limit: str) -> Check:
    return Check(arg, f"-1 (no expert on this rank) or an expert id in [0, {limit})",
                 lambda a, d: a[arg].numel() == 0 or bool(((a[arg] >= -1) & (a[arg] < d[limit])).all()),
                 lambda a, d: f"values in [{int(a[arg].min())}, {int(a[arg].max())}], {limit}={d[limit]}")


moe_gate = register(OpSpec(
    name="moe_gate", family="moe",
    summary="s = sigmoid(x W^T); selection on s + bias, limited to the topk_group best groups (group score = sum of its top-2); "
            "weights = s[ids] / sum s[ids] * route_scale (bias never enters the weights).",
    args=(Tensor("x", ("T", "D")), Tensor("weight", ("E", "D")), Tensor("bias", ("E",), optional=True),
          Param("n_group", (int,), 8, minimum=1), Param("topk_group", (int,), 4, minimum=1),
          Param("topk", (int,), 8, minimum=1), Param("route_scale", (float, int), 2.5, minimum=0.0),
          Param("score_func", (str,), "sigmoid", ("sigmoid", "softmax"))),
    outputs=(Output("weights", ("T", "topk"), torch.float32), Output("ids", ("T", "topk"), torch.int32)),
    checks=(Check("n_group", "E divisible by n_group", lambda a, d: d["E"] % a["n_group"] == 0, lambda a, d: f"E={d['E']}, n_group={a['n_group']}"),
            Check("topk_group", "topk_group <= n_group", lambda a, d: a["topk_group"] <= a["n_group"], lambda a, d: f"{a['topk_group']} > {a['n_group']}"),
            Check("topk", "topk <= topk_group * E / n_group", lambda a, d: a["topk"] <= a["topk_group"] * d["E"] // a["n_group"],
                  lambda a, d: f"topk={a['topk']}, topk_group * E / n_group = {a['topk_group'] * d['E'] // a['n_group']}")),
    metric="routing", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["T"] * d["E"] * d["D"],
))

moe_experts = register(OpSpec(
    name="moe_experts", family="moe",
    summary="y[t] = sum_j weights[t, j] * E_{ids[t, j]}(x[t]), E(x) = w2(silu(w1 x) * (w3 x)), silu*mul in fp32; ids -1 are skipped.",
    args=(Tensor("x", ("T", "D")), Tensor("ids", ("T", "K"), ("int32",)), Tensor("weights", ("T", "K"), ("float",)),
          Tensor("w1", ("E", "I", "D")), Tensor("w3", ("E", "I", "D")), Tensor("w2", ("E", "D", "I"))),
    outputs=(Output("y", ("T", "D"), lambda a: a["x"].dtype),),
    checks=(_ids_rule("ids", "E"),),
    metric="close", reduction="I", source=SRC,
    flops=lambda d: 6.0 * d["T"] * d["K"] * d["D"] * d["I"],
))

moe_grouped_gemm_contiguous = register(OpSpec(
    name="moe_grouped_gemm_contiguous", family="moe",
    summary="c[m] = a[m] . b[m_indices[m]]^T; rows sorted by group, each segment padded to a multiple of 128, padding rows (-1) give 0.",
    args=(Tensor("a", ("M", "K")), Tensor("b", ("G", "N", "K")), Tensor("m_indices", ("M",), ("int32",))),
    outputs=(Output("c", ("M", "N"), lambda a: a["a"].dtype),),
    checks=(Check("a", "M divisible by 128 (segments are 128-aligned)", lambda a, d: d["M"] % 128 == 0, lambda a, d: f"M={d['M']}"),
            _ids_rule("m_indices", "G")),
    metric="close", reduction="K", source=SRC,
    flops=lambda d: 2.0 * d["M"] * d["N"] * d["K"],
))

moe_grouped_gemm_masked = register(OpSpec(
    name="moe_grouped_gemm_masked", family="moe",
    summary="c[g, m] = a[g, m] . b[g]^T for m < masked_m[g]; rows at or beyond the count are 0.",
    args=(Tensor("a", ("G", "MM", "K")), Tensor("b", ("G", "N", "K")), Tensor("masked_m", ("G",), ("int32",))),
    outputs=(Output("c", ("G", "MM", "N"), lambda a: a["a"].dtype),),
    checks=(Check("masked_m", "0 <= masked_m[g] <= MM", lambda a, d: a["masked_m"].numel() == 0 or bool(((a["masked_m"] >= 0) & (a["masked_m"] <= d["MM"])).all()),
                  lambda a, d: f"values in [{int(a['masked_m'].min())}, {int(a['masked_m'].max())}], MM={d['MM']}"),),
    metric="close", reduction="K", source=SRC,
    flops=lambda d: 2.0 * d["G"] * d["MM"] * d["N"] * d["K"],
))
