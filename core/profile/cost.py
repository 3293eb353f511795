"""Cost view: time per generated token of one DeepSeek-V3.2 MoE decoder layer
at a given context length, split by op, with DSA (indexer + top-k + sparse MLA)
against dense MLA decode, so the O(L*k) vs O(L^2) story is visible.

This is a MODEL, not a measurement. For each op call of the layer:
  * FLOPs and bytes come from the op spec's own models at the layer's shapes
    (the arguments are meta tensors: shapes only, no data);
  * the time is the roofline time max(F / peak, B / bandwidth) of the device,
    divided by an efficiency: on a machine that was profiled, the op's
    measured share of the roofline (capped at 1) at its profiled decode shape;
    with a hardware.yaml roofline and no measurement, efficiency 1 (the
    roofline bound: what the hardware could do, not what a kernel does).
Each row says which of the two its efficiency came from.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..constants import DEEPSEEK_V32 as V
from .hardware import Roofline
from .roofline import math_class, roofline_time
from ..spec import cdiv, specs

PAGE = 64
CONTEXTS = (8192, 16384, 32768, 65536, 131072)
FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16


def _m(*shape: int, dtype: torch.dtype = BF16) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


@dataclass(frozen=True)
class Call:
    label: str      # what the layer does
    group: str      # bar/stack group
    op: str         # the op spec whose FLOP/byte model is used
    args: dict[str, Any]
    variant: str = "both"   # "dsa", "dense" or "both"


def model_cost(op: str, args: Mapping[str, Any]) -> tuple[float, float]:
    """The spec's (FLOPs, bytes) for shape-only arguments (meta tensors carry no values)."""
    spec = specs()[op]
    return spec.cost(spec.bind(**args), shapes_only=True)


def _gemm(label: str, group: str, m: int, n: int, k: int, variant: str = "both") -> list[Call]:
    """A V3.2 FP8 linear: act_quant of the input, then the block-scaled GEMM."""
    return [Call(f"{label} quant", "small ops", "act_quant", {"x": _m(m, k)}, variant),
            Call(label, group, "fp8_gemm", {"a": _m(m, k, dtype=FP8), "sa": _m(m, k // 128, dtype=torch.float32),
                                            "b": _m(n, k, dtype=FP8), "sb": _m(cdiv(n, 128), k // 128, dtype=torch.float32)}, variant)]


def _bmm(label: str, group: str, g: int, m: int, n: int, k: int, variant: str = "both") -> Call:
    """Per-head batched GEMM (MLA weight absorption), through the masked grouped-GEMM model."""
    return Call(label, group, "moe_grouped_gemm_masked", {"a": _m(g, m, k), "b": _m(g, n, k), "masked_m": _m(g, dtype=torch.int32)}, variant)


def layer_calls(batch: int, context: int, ep: int = 32, phase: str = "decode") -> list[Call]:
    """One MoE decoder layer (layers 3..60) on one rank of an EP group of ``ep`` ranks with
    data-parallel attention. ``decode``: one step of ``batch`` sequences, each with ``context``
    keys. ``prefill``: one chunk of ``batch`` tokens ending at position ``context``. With
    uniform routing each rank receives tokens * 8 token-expert slots for its 256 / ep experts."""
    b, L, h = batch, context, V.n_heads
    mb = cdiv(L, PAGE)
    ih, idim = V.index_n_heads, V.index_head_dim
    local, slots = V.n_routed_experts // ep, b * V.n_activated_experts
    absorbed = "both" if phase == "decode" else "dsa"  # decode runs both forms absorbed; dense prefill is the MHA form
    f32, i32 = torch.float32, torch.int32
    c: list[Call] = [Call("attn_norm", "small ops", "rms_norm", {"x": _m(b, V.dim), "w": _m(V.dim), "residual": _m(b, V.dim)})]
    c += _gemm("wq_a", "projections", b, V.q_lora_rank, V.dim)
    c += [Call("q_norm", "small ops", "rms_norm", {"x": _m(b, V.q_lora_rank), "w": _m(V.q_lora_rank)})]
    c += _gemm("wq_b", "projections", b, h * V.qk_head_dim, V.q_lora_rank)
    c += _gemm("wkv_a", "projections", b, V.d_qk, V.dim)
    c += [Call("kv_norm", "small ops", "rms_norm", {"x": _m(b, V.kv_lora_rank), "w": _m(V.kv_lora_rank)}),
          Call("rope q_pe", "small ops", "rope", {"x": _m(b, h, V.qk_rope_head_dim), "positions": _m(b, dtype=torch.int64),
                                                  "freqs": _m(V.qk_rope_head_dim // 2, dtype=f32), "interleaved": True}),
          _bmm("absorb W_UK", "projections", h, b, V.kv_lora_rank, V.qk_nope_head_dim, absorbed),
          Call("latent cache write", "small ops", "mla_cache_pack", {"kv": _m(b, V.d_qk)})]
    # lightning indexer (DSA only)
    c += _gemm("indexer wq_b", "indexer proj", b, ih * idim, V.q_lora_rank, "dsa")
    c += _gemm("indexer wk", "indexer proj", b, idim, V.dim, "dsa")
    c += _gemm("indexer weights_proj", "indexer proj", b, ih, V.dim, "dsa")
    c += [Call("indexer k_norm", "small ops", "layer_norm", {"x": _m(b, idim), "w": _m(idim), "b": _m(idim)}, "dsa"),
          Call("indexer rope", "small ops", "rope", {"x": _m(b, ih + 1, V.qk_rope_head_dim), "positions": _m(b, dtype=torch.int64),
                                                     "freqs": _m(V.qk_rope_head_dim // 2, dtype=f32), "interleaved": False}, "dsa"),
          Call("indexer hadamard", "small ops", "hadamard", {"x": _m(b, ih + 1, idim)}, "dsa"),
          Call("indexer q quant", "small ops", "act_quant", {"x": _m(b, ih, idim)}, "dsa"),
          Call("index cache write", "small ops", "index_cache_pack", {"k": _m(cdiv(b, PAGE), PAGE, idim)}, "dsa")]
    if phase == "decode":
        c += [Call("indexer logits", "indexer logits O(L)", "indexer_logits_paged",
                   {"q": _m(b, ih, idim, dtype=FP8), "k_cache": _m(b * mb, PAGE, 132, dtype=torch.uint8),
                    "weights": _m(b, ih, dtype=f32), "block_table": _m(b, mb, dtype=i32), "seqlens": _m(b, dtype=i32)}, "dsa"),
              Call("top-k", "top-k O(L)", "topk_select", {"logits": _m(b, L, dtype=f32), "k": V.index_topk}, "dsa"),
              Call("sparse MLA", "attention", "sparse_mla_decode",
                   {"q": _m(b, 1, h, V.d_qk), "kv_cache": _m(b * mb, PAGE, 1, 656, dtype=torch.uint8),
                    "indices": _m(b, 1, V.index_topk, dtype=i32), "sm_scale": V.softmax_scale, "d_v": V.d_v}, "dsa"),
              Call("dense MLA", "attention", "mla_decode_dense",
                   {"q": _m(b, 1, h, V.d_qk), "kv_cache": _m(b * mb, PAGE, 1, V.d_qk), "block_table": _m(b, mb, dtype=i32),
                    "cache_seqlens": _m(b, dtype=i32), "sm_scale": V.softmax_scale, "d_v": V.d_v}, "dense")]
    else:
        c += [Call("indexer logits", "indexer logits O(L)", "indexer_logits",
                   {"q": _m(b, ih, idim, dtype=FP8), "k": _m(L, idim, dtype=FP8), "weights": _m(b, ih, dtype=f32),
                    "ks": _m(b, dtype=i32), "ke": _m(b, dtype=i32), "k_scale": _m(L, dtype=f32)}, "dsa"),
              Call("top-k", "top-k O(L)", "topk_select",
                   {"logits": _m(b, L, dtype=f32), "k": V.index_topk, "ks": _m(b, dtype=i32), "ke": _m(b, dtype=i32)}, "dsa"),
              Call("sparse MLA", "attention", "sparse_mla_prefill",
                   {"q": _m(b, h, V.d_qk), "kv": _m(L, 1, V.d_qk), "indices": _m(b, 1, V.index_topk, dtype=i32),
                    "sm_scale": V.softmax_scale, "d_v": V.d_v}, "dsa")]
        # dense prefill runs the MHA form: the chunk's latents expand through wkv_b, then causal attention
        c += _gemm("wkv_b (expand k, v)", "projections", b, h * (V.qk_nope_head_dim + V.v_head_dim), V.kv_lora_rank, "dense")
        c += [Call("dense MLA (MHA form)", "attention", "mla_prefill_dense",
                   {"q": _m(b, h, V.qk_head_dim), "k": _m(L, h, V.qk_head_dim), "v": _m(L, h, V.v_head_dim),
                    "sm_scale": V.softmax_scale}, "dense")]
    c += [_bmm("absorb W_UV", "projections", h, b, V.v_head_dim, V.kv_lora_rank, absorbed)]
    c += _gemm("wo", "projections", b, V.dim, h * V.v_head_dim)
    c += [Call("ffn_norm", "small ops", "rms_norm", {"x": _m(b, V.dim), "w": _m(V.dim), "residual": _m(b, V.dim)}),
          Call("gate", "moe", "moe_gate", {"x": _m(b, V.dim), "weight": _m(V.n_routed_experts, V.dim), "bias": _m(V.n_routed_experts, dtype=f32),
                                           "n_group": V.n_expert_groups, "topk_group": V.n_limited_groups, "topk": V.n_activated_experts,
                                           "route_scale": V.route_scale, "score_func": "sigmoid"}),
          Call(f"routed experts ({local} local, EP{ep})", "moe", "moe_experts",
               {"x": _m(slots, V.dim), "ids": _m(slots, 1, dtype=i32), "weights": _m(slots, 1, dtype=f32),
                "w1": _m(local, V.moe_inter_dim, V.dim), "w3": _m(local, V.moe_inter_dim, V.dim), "w2": _m(local, V.dim, V.moe_inter_dim)}),
          Call("shared expert", "moe", "moe_experts",
               {"x": _m(b, V.dim), "ids": _m(b, 1, dtype=i32), "weights": _m(b, 1, dtype=f32),
                "w1": _m(1, V.moe_inter_dim, V.dim), "w3": _m(1, V.moe_inter_dim, V.dim), "w2": _m(1, V.dim, V.moe_inter_dim)})]
    return c


def efficiencies(doc: Mapping[str, Any] | None, backend: str | None) -> dict[str, float]:
    """op -> measured share of the roofline (capped at 1) from a profile document's decode rows
    (prefill rows where an op has no decode case), for one backend."""
    out: dict[str, float] = {}
    if not doc:
        return out
    for phase in ("prefill", "decode"):  # decode last: it wins where both exist
        for r in doc["results"]:
            if r["phase"] == phase and r["perf"] and r["perf"]["roofline_share"] and (backend is None or r["backend"] == backend):
                out[r["op"]] = min(1.0, float(r["perf"]["roofline_share"]))
    return out


def layer_cost(batch: int, context: int, roof: Roofline, eff: Mapping[str, float], variant: str, ep: int = 32,
               phase: str = "decode") -> list[dict[str, Any]]:
    """Each call of one layer step: FLOPs, bytes, bound and modelled seconds for the step."""
    rows = []
    for call in layer_calls(batch, context, ep, phase):
        if call.variant not in ("both", variant):
            continue
        flops, nbytes = model_cost(call.op, call.args)
        spec = specs()[call.op]
        t_star, bound, partial = roofline_time(flops, nbytes, roof, math_class(spec, spec.bind(**call.args)))
        e = eff.get(call.op)
        source = f"measured share {e:.3g}" if e else "roofline bound (efficiency 1, not measured)"
        t = None if t_star is None else t_star / (e or 1.0)
        rows.append({"label": call.label, "group": call.group, "op": call.op, "flops": flops, "bytes": nbytes,
                     "bound": bound, "partial": partial, "seconds": t, "efficiency": source})
    return rows


def _per_token(batch: int, context: int, roof: Roofline, eff: Mapping[str, float], variant: str, ep: int,
               phase: str, chunk: int) -> list[dict[str, Any]]:
    """Per-token rows. Decode: one step of ``batch`` sequences / batch. Prefill: the whole
    ``context``-token prompt in chunks of ``chunk`` (each chunk attends everything before it)
    / context, so the causal O(L^2) of dense attention shows up in the per-token average."""
    if phase == "decode":
        steps = [(batch, context)]
        tokens = batch
    else:
        steps = [(min(chunk, context - s), min(s + chunk, context)) for s in range(0, context, chunk)]
        tokens = context
    merged: dict[str, dict[str, Any]] = {}
    for m, end in steps:
        for r in layer_cost(m, end, roof, eff, variant, ep, phase):
            acc = merged.setdefault(r["label"], {**r, "flops": 0.0, "bytes": 0.0, "seconds": 0.0})
            acc["flops"] += r["flops"]
            acc["bytes"] += r["bytes"]
            acc["seconds"] += r["seconds"] or 0.0
    rows = list(merged.values())
    for r in rows:
        r["per_token_s"] = r["seconds"] / tokens
    return rows


def cost_table(roof: Roofline, eff: Mapping[str, float], batch: int = 32, contexts: Sequence[int] = CONTEXTS,
               ep: int = 32, phase: str = "decode", chunk: int = 4096) -> dict[str, Any]:
    """Per context: per-token seconds by group for DSA and for dense MLA, and the totals."""
    per = "per step / batch" if phase == "decode" else f"whole prompt in {chunk}-token chunks / context"
    out = {"phase": phase, "batch": batch, "chunk": chunk, "ep": ep, "roofline": roof.name, "roofline_origin": roof.origin,
           "efficiency_from": "measured on this machine" if eff else "none (roofline bound)",
           "note": f"modelled: spec FLOP/byte models at the layer's shapes / (roofline x efficiency); per token = {per}",
           "contexts": []}
    for L in contexts:
        entry: dict[str, Any] = {"context": L}
        for variant in ("dsa", "dense"):
            rows = _per_token(batch, L, roof, eff, variant, ep, phase, chunk)
            groups: dict[str, float] = {}
            for r in rows:
                groups[r["group"]] = groups.get(r["group"], 0.0) + r["per_token_s"]
            entry[variant] = {"per_token_s": sum(groups.values()), "groups": groups, "calls": rows}
        out["contexts"].append(entry)
    return out


def markdown_table(cost: Mapping[str, Any]) -> str:
    groups = list(cost["contexts"][0]["dsa"]["groups"])
    head = ["context"] + [f"DSA {g}" for g in groups] + ["DSA total", "dense-MLA total", "dense / DSA"]
    what = f"decode batch {cost['batch']}" if cost.get("phase", "decode") == "decode" else f"prefill in {cost['chunk']}-token chunks"
    lines = [f"Per-token time of one MoE decoder layer (one EP{cost['ep']} rank, data-parallel attention), {what}, on {cost['roofline']} "
             f"({cost['roofline_origin']} roofline; efficiencies: {cost['efficiency_from']}). {cost['note']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def t(s: float) -> str:
        return f"{s * 1e6:.3g} us" if s < 1e-3 else (f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s")

    for e in cost["contexts"]:
        d, n = e["dsa"], e["dense"]
        cells = [f"{e['context'] // 1024}K"] + [t(d["groups"][g]) for g in groups] + [t(d["per_token_s"]), t(n["per_token_s"]),
                                                                                    f"{n['per_token_s'] / d['per_token_s']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    bound_only = sorted({c["op"] for e in cost["contexts"] for v in ("dsa", "dense") for c in e[v]["calls"]
                         if c["efficiency"].startswith("roofline")})
    if bound_only and cost["efficiency_from"] != "none (roofline bound)":
        lines += ["", f"Ops with no measurement here, modelled at the roofline bound (efficiency 1): {', '.join(bound_only)}."]
    return "\n".join(lines) + "\n"
