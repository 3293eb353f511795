"""Mixture of experts: sigmoid gate with group-limited, bias-corrected
routing, expert SwiGLU MLPs, and the two grouped-GEMM layouts (SPEC §7)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32
from .hostile import poison, strided_views
from ..spec import DEEPSEEK, DEEPSEEK_FULL, EDGE, POISON, TINY, Case, Check, OpSpec, Output, Param, Tensor, randn, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (Gate, MoE, Expert); DeepGEMM m_grouped_fp8_gemm_nt_contiguous/masked"
DS = DEEPSEEK_V32
ALIGN = 128  # DeepGEMM's get_mk_alignment_for_contiguous_layout(): one M tile never mixes two groups
SKEWED = [300, 0, 2, 0, 41, 1]
"""Real routing is skewed: hundreds of rows on a hot expert, some experts empty."""


def _ids_rule(arg: str, limit: str) -> Check:
    return Check(arg, f"-1 (no expert on this rank) or an expert id in [0, {limit})",
                 lambda a, d: a[arg].numel() == 0 or bool(((a[arg] >= -1) & (a[arg] < d[limit])).all()),
                 lambda a, d: f"values in [{int(a[arg].min())}, {int(a[arg].max())}], {limit}={d[limit]}")


def _same_dtype(arg: str, like: str) -> Check:
    return Check(arg, f"the same dtype as '{like}'", lambda a, d: a[arg].dtype == a[like].dtype,
                 lambda a, d: f"{a[arg].dtype} vs {a[like].dtype}".replace("torch.", ""))


def _one_group_per_tile(m_indices: torch.Tensor) -> torch.Tensor:
    """Per 128-row tile: True when its non-padding rows all name one group."""
    tiles = m_indices.reshape(-1, ALIGN).long()
    valid = tiles >= 0
    hi = torch.where(valid, tiles, -1).amax(dim=1)
    lo = torch.where(valid, tiles, hi.unsqueeze(1)).amin(dim=1)
    return hi == lo


def _mixed_tiles(m_indices: torch.Tensor) -> str:
    first = int(torch.nonzero(~_one_group_per_tile(m_indices))[0]) * ALIGN
    groups = sorted(set(m_indices[first:first + ALIGN].tolist()) - {-1})
    return f"rows {first}..{first + ALIGN - 1} mix groups {groups}"


# -- case builders ------------------------------------------------------------------------------


def _gate_case(t: int, d: int, e: int, n_group: int, topk_group: int, topk: int, bias: bool = True,
               route_scale: float = 2.5, score_func: str = "sigmoid", transposed: bool = False):
    def make(gen):
        # weight ~ N(0, 1/d) keeps the logits O(1), where sigmoid scores spread and the bias can reorder them
        x = randn(gen, d, t).t() if transposed else randn(gen, t, d)
        args = {"x": x, "weight": randn(gen, e, d, scale=d ** -0.5), "bias": None,
                "n_group": n_group, "topk_group": topk_group, "topk": topk, "route_scale": route_scale,
                "score_func": score_func}
        if bias:
            args["bias"] = torch.randn(e, generator=gen) * 0.1
        return args
    return make


def _gate_ties(gen):
    # every group holds the same four expert rows: all group scores tie, and within a group the scores
    # come in equal pairs across groups, so ties straddle both the group and the expert boundary
    base = randn(gen, 4, 32, scale=32 ** -0.5)
    return {"x": randn(gen, 6, 32), "weight": base.repeat(4, 1), "bias": torch.zeros(16),
            "n_group": 4, "topk_group": 2, "topk": 4, "route_scale": 2.5, "score_func": "sigmoid"}


def _gate_cases() -> list[Case]:
    ds = (DS.n_routed_experts, DS.n_expert_groups, DS.n_limited_groups, DS.n_activated_experts)
    e, g, tg, k = ds

    def fp32(gen):
        a = _gate_case(16, 64, 64, 8, 3, 6)(gen)
        return {**a, "x": a["x"].float(), "weight": a["weight"].float()}

    return [
        Case("moe_gate", "fp32", fp32, note="fp32 activations and gate weight"),
        Case("moe_gate", "strided-views", strided_views(_gate_case(16, 64, 64, 8, 3, 6)), tags=EDGE),
        Case("moe_gate", "fp32-strided-views", strided_views(fp32), tags=EDGE),
        Case("moe_gate", "tiny", _gate_case(4, 32, 16, 4, 2, 4), tags=TINY),
        Case("moe_gate", "T0", _gate_case(0, 64, e, g, tg, k), tags=EDGE),
        Case("moe_gate", "T1", _gate_case(1, 64, e, g, tg, k), tags=EDGE),
        Case("moe_gate", "ties", _gate_ties, tags=EDGE, note="tied scores at the group and expert boundary: any tied choice is correct"),
        Case("moe_gate", "non-contiguous", _gate_case(8, 64, 32, 4, 2, 4, transposed=True), tags=EDGE),
        Case("moe_gate", "no-bias", _gate_case(16, 64, 64, 8, 3, 6, bias=False), note="group score = max, as DeepSeek's Gate without bias"),
        Case("moe_gate", "softmax", _gate_case(16, 64, 64, 8, 3, 6, bias=False, route_scale=1.0, score_func="softmax"),
             note="softmax scores, weights not renormalised"),
        Case("moe_gate", "one-group", _gate_case(16, 64, 64, 1, 1, 6)),
        Case("moe_gate", "ds-routing", _gate_case(32, 256, e, g, tg, k, route_scale=DS.route_scale),
             tags=DEEPSEEK, note="V3.2 routing (256 experts, 8 groups, 4 kept, top-8), small dim"),
        Case("moe_gate", "ds-hidden", _gate_case(64, DS.dim, e, g, tg, k, route_scale=DS.route_scale),
             tags=DEEPSEEK_FULL),
    ]


def _unique_ids(gen: torch.Generator, t: int, e: int, k: int) -> torch.Tensor:
    """k distinct experts per token, as the gate produces."""
    return torch.rand(t, e, generator=gen).argsort(dim=1)[:, :k].to(torch.int32)


def _experts_case(t: int, d: int, i: int, e: int, k: int, ids=None, transposed: bool = False, nan_at_minus1: bool = False):
    def make(gen):
        routed = _unique_ids(gen, t, e, k) if ids is None else ids(gen, t, e, k)
        w = torch.rand(t, k, generator=gen) + 0.1
        w = w / w.sum(dim=1, keepdim=True) * DS.route_scale
        if nan_at_minus1:
            w = w.masked_fill(routed < 0, float("nan"))  # never read: a -1 slot has no expert on this rank
        return {"x": randn(gen, d, t).t() if transposed else randn(gen, t, d), "ids": routed, "weights": w,
                "w1": randn(gen, e, i, d, scale=d ** -0.5), "w3": randn(gen, e, i, d, scale=d ** -0.5),
                "w2": randn(gen, e, d, i, scale=i ** -0.5)}
    return make


def _skip_expert(gen, t, e, k, skipped=3):
    ids = _unique_ids(gen, t, e - 1, k)
    return torch.where(ids >= skipped, ids + 1, ids)  # expert `skipped` receives no token


def _half_remote_of(ids, gen):
    ids = ids.clone()
    ids[:, 1:] = ids[:, 1:].masked_fill(torch.rand(ids[:, 1:].shape, generator=gen) < 0.5, -1)
    return ids


def _half_remote(gen, t, e, k):
    ids = _unique_ids(gen, t, e, k)
    return ids.masked_fill(torch.rand(t, k, generator=gen) < 0.5, -1)


def _skewed_ids(gen, t, e, k):
    """Slot 0 of 300+ tokens on expert 0, the rest spread over half the experts; the others stay empty."""
    ids = _unique_ids(gen, t, e // 2 - 1, k) + 1
    ids[:, 0] = 0
    return ids


def _poison_unrouted(make):
    """NaN in the weights of every expert no token names, and in the routing weights of -1 slots."""
    def wrapped(gen):
        a = make(gen)
        used = torch.zeros(a["w1"].shape[0], dtype=torch.bool)
        used[a["ids"][a["ids"] >= 0].long()] = True
        for w in ("w1", "w3", "w2"):
            a[w] = poison(a[w], ~used[:, None, None])
        a["weights"] = poison(a["weights"], a["ids"] < 0)
        return a
    return wrapped


def _experts_cases() -> list[Case]:
    return [
        Case("moe_experts", "skewed-routing", _experts_case(320, 32, 16, 8, 2, ids=_skewed_ids), tags=EDGE,
             note="320 tokens on expert 0, experts 4..7 empty"),
        Case("moe_experts", "skewed-routing-ep", _experts_case(320, 32, 16, 8, 3, ids=lambda g, t, e, k: _half_remote_of(
            _skewed_ids(g, t, e, k), g)), tags=EDGE, note="skewed, and half the slots on other ranks"),
        Case("moe_experts", "poison-unrouted-experts", _poison_unrouted(_experts_case(12, 32, 16, 8, 3, ids=_skip_expert)),
             tags=POISON, fill_uninitialized=True, note="NaN weights for every expert no token names: never read"),
        Case("moe_experts", "poison-unrouted-ep", _poison_unrouted(_experts_case(16, 32, 16, 8, 2, ids=lambda g, t, e, k: (
            _half_remote_of(_skewed_ids(g, t, e, k), g)))), tags=POISON, fill_uninitialized=True,
             note="experts 4..7 unrouted (NaN weights), half the slots -1 (NaN routing weights)"),
        Case("moe_experts", "strided-views", strided_views(_experts_case(8, 32, 16, 4, 2)), tags=EDGE,
             note="x, ids, weights and the expert weights as offset views of padded, poisoned buffers"),
        Case("moe_experts", "tiny", _experts_case(4, 32, 16, 4, 2), tags=TINY),
        Case("moe_experts", "T0", _experts_case(0, 32, 16, 4, 2), tags=EDGE),
        Case("moe_experts", "T1", _experts_case(1, 32, 16, 8, 4), tags=EDGE),
        Case("moe_experts", "empty-expert", _experts_case(12, 32, 16, 8, 3, ids=_skip_expert), tags=EDGE,
             note="expert 3 receives no token"),
        Case("moe_experts", "one-expert", _experts_case(16, 32, 16, 8, 1, ids=lambda g, t, e, k: torch.full((t, k), 5, dtype=torch.int32)),
             tags=EDGE, note="every token on expert 5"),
        Case("moe_experts", "duplicate-ids", _experts_case(6, 32, 16, 4, 2, ids=lambda g, t, e, k: torch.full((t, k), 1, dtype=torch.int32)),
             tags=EDGE, note="both slots of every token name expert 1: it counts twice, with both weights"),
        Case("moe_experts", "ep-minus1", _experts_case(16, 32, 16, 8, 4, ids=_half_remote), tags=EDGE,
             note="about half the slots are -1 (experts on other ranks)"),
        Case("moe_experts", "ep-minus1-nan-weights", _experts_case(16, 32, 16, 8, 4, ids=_half_remote, nan_at_minus1=True),
             tags=EDGE, note="weights of -1 slots are NaN: a backend must not read them"),
        Case("moe_experts", "all-minus1", _experts_case(4, 32, 16, 4, 2, ids=lambda g, t, e, k: torch.full((t, k), -1, dtype=torch.int32)),
             tags=EDGE, note="no expert on this rank: y = 0"),
        Case("moe_experts", "non-contiguous", _experts_case(8, 32, 16, 4, 2, transposed=True), tags=EDGE),
        Case("moe_experts", "ds-routing", _experts_case(16, 128, 64, DS.n_routed_experts, DS.n_activated_experts),
             tags=DEEPSEEK, note="256 experts, top-8, small dims"),
        Case("moe_experts", "ds-routing-wide", _experts_case(128, 256, 128, DS.n_routed_experts, DS.n_activated_experts),
             tags=DEEPSEEK_FULL),
    ]


def _segment_ids(counts: list[int]) -> torch.Tensor:
    """m_indices of the contiguous layout: counts[g] rows of group g, each segment padded with -1 to 128 rows."""
    segs = []
    for g, c in enumerate(counts):
        segs += [torch.full((c,), g, dtype=torch.int32), torch.full((-c % ALIGN,), -1, dtype=torch.int32)]
    return torch.cat(segs) if segs else torch.empty(0, dtype=torch.int32)


def _contiguous_case(counts: list[int], n: int, k: int, transposed: bool = False):
    def make(gen):
        m_indices = _segment_ids(counts)
        m = m_indices.numel()
        # padding rows of `a` hold random values, not zeros: their output must still be 0
        a = randn(gen, k, m).t() if transposed else randn(gen, m, k)
        return {"a": a, "b": randn(gen, len(counts), n, k, scale=k ** -0.5), "m_indices": m_indices}
    return make


def _poison_padding(make, arg="a"):
    """NaN in every padding row of ``a`` (m_indices -1): c there is 0, never NaN."""
    def wrapped(gen):
        a = make(gen)
        a[arg] = poison(a[arg], (a["m_indices"] < 0)[:, None])
        return a
    return wrapped


def _poison_beyond_count(make):
    def wrapped(gen):
        a = make(gen)
        rows = torch.arange(a["a"].shape[1])[None, :] >= a["masked_m"][:, None]
        a["a"] = poison(a["a"], rows[..., None])
        return a
    return wrapped


def _contiguous_cases() -> list[Case]:
    return [
        Case("moe_grouped_gemm_contiguous", "poison-padding-nan", _poison_padding(_contiguous_case([3, 130], 64, 32)),
             tags=POISON, fill_uninitialized=True, note="NaN in every -1 padding row: c = 0 there"),
        Case("moe_grouped_gemm_contiguous", "poison-padding-nan-empty-group", _poison_padding(_contiguous_case([5, 0, 200, 1], 32, 64)),
             tags=POISON, fill_uninitialized=True),
        Case("moe_grouped_gemm_contiguous", "skewed", _contiguous_case(SKEWED, 32, 64), tags=EDGE,
             note="300 rows on group 0, empty groups"),
        Case("moe_grouped_gemm_contiguous", "skewed-poison", _poison_padding(_contiguous_case(SKEWED[::-1], 32, 64)),
             tags=POISON, fill_uninitialized=True),
        Case("moe_grouped_gemm_contiguous", "strided-views", strided_views(_contiguous_case([7, 60], 32, 64)), tags=EDGE,
             note="a, b (the expert weights) and m_indices as offset views of padded, poisoned buffers"),
        Case("moe_grouped_gemm_contiguous", "tiny", _contiguous_case([3, 130], 64, 32), tags=TINY),
        Case("moe_grouped_gemm_contiguous", "M0", _contiguous_case([0, 0, 0], 64, 32), tags=EDGE),
        Case("moe_grouped_gemm_contiguous", "empty-group", _contiguous_case([5, 0, 200, 1], 32, 64), tags=EDGE),
        Case("moe_grouped_gemm_contiguous", "one-group-no-padding", _contiguous_case([0, 0, 256, 0], 32, 64), tags=EDGE),
        Case("moe_grouped_gemm_contiguous", "all-padding", lambda g: {**_contiguous_case([0, 0], 32, 64)(g),
             "a": randn(g, 128, 64), "m_indices": torch.full((128,), -1, dtype=torch.int32)}, tags=EDGE,
             note="one tile, every row -1: c = 0"),
        Case("moe_grouped_gemm_contiguous", "non-contiguous", _contiguous_case([7, 60], 32, 64, transposed=True), tags=EDGE),
        Case("moe_grouped_gemm_contiguous", "ds-ep32", _contiguous_case([90, 130, 0, 17, 128, 260, 1, 64], 256, 256),
             tags=DEEPSEEK, note="8 local experts (EP32), w13-like N, small K"),
        Case("moe_grouped_gemm_contiguous", "ds-w13-tp8", _contiguous_case([90, 130, 0, 17], 2 * DS.moe_inter_dim // 8, DS.dim),
             tags=DEEPSEEK_FULL, note="w1|w3 of a 1/8 slice of moe_inter_dim, K = dim"),
    ]


def _masked_case(counts: list[int], m_max: int, n: int, k: int, transposed: bool = False):
    def make(gen):
        g = len(counts)
        # rows beyond the count hold random values: their output must still be 0
        a = randn(gen, k, g * m_max).t().reshape(g, m_max, k) if transposed else randn(gen, g, m_max, k)
        return {"a": a, "b": randn(gen, g, n, k, scale=k ** -0.5), "masked_m": torch.tensor(counts, dtype=torch.int32)}
    return make


def _masked_cases() -> list[Case]:
    return [
        Case("moe_grouped_gemm_masked", "poison-beyond-count", _poison_beyond_count(_masked_case([3, 9, 0], 12, 32, 64)),
             tags=POISON, fill_uninitialized=True, note="NaN in every row at or beyond masked_m: c = 0 there"),
        Case("moe_grouped_gemm_masked", "poison-beyond-count-tiny", _poison_beyond_count(_masked_case([3, 8], 8, 32, 32)),
             tags=POISON, fill_uninitialized=True),
        Case("moe_grouped_gemm_masked", "skewed", _poison_beyond_count(_masked_case([310, 0, 3], 320, 32, 64)), tags=POISON,
             fill_uninitialized=True, note="310 rows on group 0, an empty group"),
        Case("moe_grouped_gemm_masked", "strided-views", strided_views(_masked_case([3, 9], 12, 32, 64)), tags=EDGE),
        Case("moe_grouped_gemm_masked", "tiny", _masked_case([3, 8], 8, 32, 32), tags=TINY),
        Case("moe_grouped_gemm_masked", "empty-groups", _masked_case([0, 5, 0], 16, 32, 64), tags=EDGE),
        Case("moe_grouped_gemm_masked", "all-zero", _masked_case([0, 0], 16, 32, 64), tags=EDGE, note="c = 0"),
        Case("moe_grouped_gemm_masked", "full", _masked_case([16, 16], 16, 32, 64), tags=EDGE, note="every slot used"),
        Case("moe_grouped_gemm_masked", "G0", _masked_case([], 16, 32, 64), tags=EDGE),
        Case("moe_grouped_gemm_masked", "non-contiguous", _masked_case([3, 9], 12, 32, 64, transposed=True), tags=EDGE),
        Case("moe_grouped_gemm_masked", "ds-decode", _masked_case([20, 0, 64, 33, 1, 7, 64, 50], 64, 256, 256),
             tags=DEEPSEEK, note="decode-style low-latency layout, 8 local experts"),
        Case("moe_grouped_gemm_masked", "ds-w2-tp8", _masked_case([20, 0, 64, 33, 1, 7, 64, 50], 64, DS.dim, DS.moe_inter_dim // 8),
             tags=DEEPSEEK_FULL, note="w2 of a 1/8 slice of moe_inter_dim: N = dim"),
    ]


# -- specs --------------------------------------------------------------------------------------

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
            Check("n_group", "at least 2 experts per group when bias is given (a group scores the sum of its top-2)",
                  lambda a, d: a["bias"] is None or a["n_group"] == 1 or d["E"] // a["n_group"] >= 2,
                  lambda a, d: f"E={d['E']}, n_group={a['n_group']}"),
            Check("topk_group", "topk_group <= n_group", lambda a, d: a["topk_group"] <= a["n_group"], lambda a, d: f"{a['topk_group']} > {a['n_group']}"),
            Check("topk", "topk <= topk_group * E / n_group", lambda a, d: a["topk"] <= a["topk_group"] * d["E"] // a["n_group"],
                  lambda a, d: f"topk={a['topk']}, topk_group * E / n_group = {a['topk_group'] * d['E'] // a['n_group']}")),
    metric="routing", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["T"] * d["E"] * d["D"],
    cases=_gate_cases,
    doc="With bias None a group scores its maximum instead (DeepSeek's Gate); score_func 'softmax' takes softmax over the E "
        "experts and does not renormalise the selected weights. ids are a set: order and the choice among tied experts are free.",
))

moe_experts = register(OpSpec(
    name="moe_experts", family="moe",
    summary="y[t] = sum_j weights[t, j] * E_{ids[t, j]}(x[t]), E(x) = w2(silu(w1 x) * (w3 x)), silu*mul in fp32; ids -1 are skipped.",
    args=(Tensor("x", ("T", "D")), Tensor("ids", ("T", "K"), ("int32",)), Tensor("weights", ("T", "K"), ("float",)),
          Tensor("w1", ("E", "I", "D")), Tensor("w3", ("E", "I", "D")), Tensor("w2", ("E", "D", "I"))),
    outputs=(Output("y", ("T", "D"), lambda a: a["x"].dtype),),
    checks=(_ids_rule("ids", "E"), _same_dtype("w1", "x"), _same_dtype("w3", "x"), _same_dtype("w2", "x")),
    metric="close", reduction="I", source=SRC,
    # counts every slot, -1 included: the work issued, an upper bound on the useful work
    flops=lambda d: 6.0 * d["T"] * d["K"] * d["D"] * d["I"],
    cases=_experts_cases,
    doc="The weights of -1 slots and the weights of experts no token names are never read (they may hold anything, NaN "
        "included: SPEC §10). The shared expert is added by the layer, not here.",
))

moe_grouped_gemm_contiguous = register(OpSpec(
    name="moe_grouped_gemm_contiguous", family="moe",
    summary="c[m] = a[m] . b[m_indices[m]]^T; rows sorted by group, each segment padded to a multiple of 128, padding rows (-1) give 0.",
    args=(Tensor("a", ("M", "K")), Tensor("b", ("G", "N", "K")), Tensor("m_indices", ("M",), ("int32",))),
    outputs=(Output("c", ("M", "N"), lambda a: a["a"].dtype),),
    checks=(Check("a", "M divisible by 128 (segments are 128-aligned)", lambda a, d: d["M"] % ALIGN == 0, lambda a, d: f"M={d['M']}"),
            _ids_rule("m_indices", "G"),
            Check("m_indices", "one group per 128-row tile (besides -1 padding rows)",
                  lambda a, d: bool(_one_group_per_tile(a["m_indices"]).all()), lambda a, d: _mixed_tiles(a["m_indices"])),
            _same_dtype("b", "a")),
    metric="close", reduction="K", source=SRC,
    # counts padding rows too: the work a 128-tiled kernel issues
    flops=lambda d: 2.0 * d["M"] * d["N"] * d["K"],
    cases=_contiguous_cases,
    doc="DeepGEMM leaves the output rows of -1 padding unwritten; dsport's contract makes them 0, so a backend "
        "wrapping DeepGEMM must zero them. Rows of one group need not be adjacent tiles, but no tile mixes groups. "
        "Padding rows of a may hold anything, NaN included (SPEC §10): they never enter a product.",
))

moe_grouped_gemm_masked = register(OpSpec(
    name="moe_grouped_gemm_masked", family="moe",
    summary="c[g, m] = a[g, m] . b[g]^T for m < masked_m[g]; rows at or beyond the count are 0.",
    args=(Tensor("a", ("G", "MM", "K")), Tensor("b", ("G", "N", "K")), Tensor("masked_m", ("G",), ("int32",))),
    outputs=(Output("c", ("G", "MM", "N"), lambda a: a["a"].dtype),),
    checks=(Check("masked_m", "0 <= masked_m[g] <= MM", lambda a, d: a["masked_m"].numel() == 0 or bool(((a["masked_m"] >= 0) & (a["masked_m"] <= d["MM"])).all()),
                  lambda a, d: f"values in [{int(a['masked_m'].min())}, {int(a['masked_m'].max())}], MM={d['MM']}"),
            _same_dtype("b", "a")),
    metric="close", reduction="K", source=SRC,
    # counts every slot up to MM: the work issued; the useful work is sum(masked_m) rows
    flops=lambda d: 2.0 * d["G"] * d["MM"] * d["N"] * d["K"],
    cases=_masked_cases,
    doc="DeepGEMM's masked GEMM leaves rows at or beyond masked_m[g] undefined; dsport's contract makes them 0, "
        "so a backend wrapping DeepGEMM must zero them. Rows of a at or beyond the count may hold anything (SPEC §10).",
))


# -- FP8 grouped GEMMs (DeepGEMM m_grouped_fp8_gemm_nt_contiguous / _masked) ----------------------

def _fp8_acts(gen: torch.Generator, *lead: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations as act_quant leaves them: e4m3fn codes and one power-of-two scale per 128 values."""
    y = (torch.randn(*lead, k, generator=gen) * 448.0 / 4).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    s = torch.exp2(torch.randint(-8, 3, (*lead, k // 128), generator=gen).float())
    return y, s


def _fp8_experts(gen: torch.Generator, g: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert weights as the checkpoint stores them: e4m3fn [G, N, K] with 128x128 block scales."""
    w = (torch.randn(g, n, k, generator=gen) * 448.0 / 4).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
    s = torch.rand(g, -(-n // 128), k // 128, generator=gen) * 1e-3 + 1e-4
    return w, s


def _fp8_contiguous_case(counts: list[int], n: int, k: int):
    def make(gen):
        m_indices = _segment_ids(counts)
        a, sa = _fp8_acts(gen, m_indices.numel(), k=k)  # padding rows hold random codes: their output must still be 0
        b, sb = _fp8_experts(gen, len(counts), n, k)
        return {"a": a, "sa": sa, "b": b, "sb": sb, "m_indices": m_indices}
    return make


def _poison_unused_groups(make):
    """0xFF (NaN) codes and NaN scales in every group no row names: never read (SPEC §10)."""
    def wrapped(gen):
        a = make(gen)
        ids = a["m_indices"] if "m_indices" in a else torch.nonzero(a["masked_m"] > 0).squeeze(1)
        used = torch.zeros(a["b"].shape[0], dtype=torch.bool)
        used[ids[ids >= 0].long()] = True
        a["b"], a["sb"] = poison(a["b"], ~used[:, None, None]), poison(a["sb"], ~used[:, None, None])
        return a
    return wrapped


def _poison_fp8_padding(make):
    """NaN codes and NaN scales in every -1 padding row: c = 0 there, never NaN."""
    def wrapped(gen):
        a = make(gen)
        pad = (a["m_indices"] < 0)[:, None]
        a["a"], a["sa"] = poison(a["a"], pad), poison(a["sa"], pad)
        return a
    return wrapped


def _fp8_contiguous_cases() -> list[Case]:
    op = "moe_grouped_fp8_gemm_contiguous"
    return [
        Case(op, "tiny", _fp8_contiguous_case([3, 130], 128, 256), tags=TINY),
        Case(op, "poison-padding-nan", _poison_fp8_padding(_fp8_contiguous_case([5, 0, 200, 1], 128, 256)), tags=POISON,
             fill_uninitialized=True, note="NaN codes and scales in every -1 padding row: c = 0 there"),
        Case(op, "poison-unused-groups", _poison_unused_groups(_fp8_contiguous_case([7, 0, 60, 0], 128, 256)), tags=POISON,
             fill_uninitialized=True, note="NaN weights and scales for every group no row names: never read"),
        Case(op, "skewed", _fp8_contiguous_case(SKEWED, 128, 128), tags=EDGE, note="300 rows on group 0, empty groups"),
        Case(op, "ragged-n", _fp8_contiguous_case([7, 60], 200, 256), tags=EDGE, note="N not a multiple of 128: a partial scale block"),
        Case(op, "strided-views", strided_views(_fp8_contiguous_case([7, 60], 128, 256)), tags=EDGE,
             note="a, sa, b, sb and m_indices as offset views of padded, poisoned buffers"),
        Case(op, "M0", _fp8_contiguous_case([0, 0, 0], 128, 128), tags=EDGE),
        Case(op, "all-padding", lambda g: {**_fp8_contiguous_case([0, 0], 128, 128)(g),
             **dict(zip(("a", "sa"), _fp8_acts(g, 128, k=128))), "m_indices": torch.full((128,), -1, dtype=torch.int32)},
             tags=EDGE, note="one tile, every row -1: c = 0"),
        Case(op, "ds-ep32", _fp8_contiguous_case([90, 130, 0, 17, 128, 260, 1, 64], 256, 256), tags=DEEPSEEK,
             note="8 local experts (EP32), w13-like N, small K"),
        Case(op, "ds-w13-tp8", _fp8_contiguous_case([90, 130, 0, 17], 2 * DS.moe_inter_dim // 8, DS.dim), tags=DEEPSEEK_FULL,
             note="w1|w3 of a 1/8 slice of moe_inter_dim, K = dim"),
    ]


def _fp8_masked_case(counts: list[int], m_max: int, n: int, k: int):
    def make(gen):
        a, sa = _fp8_acts(gen, len(counts), m_max, k=k)  # rows beyond the count hold random codes: their output must be 0
        b, sb = _fp8_experts(gen, len(counts), n, k)
        return {"a": a, "sa": sa, "b": b, "sb": sb, "masked_m": torch.tensor(counts, dtype=torch.int32)}
    return make


def _poison_fp8_beyond_count(make):
    def wrapped(gen):
        a = make(gen)
        rows = (torch.arange(a["a"].shape[1])[None, :] >= a["masked_m"][:, None])[..., None]
        a["a"], a["sa"] = poison(a["a"], rows), poison(a["sa"], rows)
        return a
    return wrapped


def _fp8_masked_cases() -> list[Case]:
    op = "moe_grouped_fp8_gemm_masked"
    return [
        Case(op, "tiny", _fp8_masked_case([3, 8], 8, 128, 128), tags=TINY),
        Case(op, "poison-beyond-count", _poison_fp8_beyond_count(_fp8_masked_case([3, 9, 0], 12, 128, 256)), tags=POISON,
             fill_uninitialized=True, note="NaN codes and scales in every row at or beyond masked_m: c = 0 there"),
        Case(op, "poison-empty-groups", _poison_unused_groups(_poison_fp8_beyond_count(_fp8_masked_case([0, 5, 0, 2], 8, 128, 256))),
             tags=POISON, fill_uninitialized=True, note="NaN weights and scales for every group with masked_m = 0: never read"),
        Case(op, "ragged-n", _fp8_masked_case([3, 9], 12, 200, 256), tags=EDGE, note="N not a multiple of 128"),
        Case(op, "strided-views", strided_views(_fp8_masked_case([3, 9], 12, 128, 256)), tags=EDGE),
        Case(op, "all-zero", _fp8_masked_case([0, 0], 16, 128, 128), tags=EDGE, note="c = 0"),
        Case(op, "full", _fp8_masked_case([16, 16], 16, 128, 128), tags=EDGE, note="every slot used"),
        Case(op, "G0", _fp8_masked_case([], 16, 128, 128), tags=EDGE),
        Case(op, "ds-decode", _fp8_masked_case([20, 0, 64, 33, 1, 7, 64, 50], 64, 256, 256), tags=DEEPSEEK,
             note="decode-style low-latency layout, 8 local experts"),
        Case(op, "ds-w2-tp8", _fp8_masked_case([20, 0, 64, 33, 1, 7, 64, 50], 64, DS.dim, DS.moe_inter_dim // 8),
             tags=DEEPSEEK_FULL, note="w2 of a 1/8 slice of moe_inter_dim: N = dim"),
    ]


def _k_blocks(arg: str) -> Check:
    return Check(arg, "K divisible by 128 (one activation scale per 128 values)", lambda a, d: d["K"] % 128 == 0,
                 lambda a, d: f"K={d['K']}")


def _same_fp8(arg: str, like: str) -> Check:
    return Check(arg, f"the same fp8 dtype as '{like}'", lambda a, d: a[arg].dtype == a[like].dtype,
                 lambda a, d: f"{a[arg].dtype} vs {a[like].dtype}".replace("torch.", ""))


FP8_CONTRACT = ("Per row and group the product is fp8_gemm's: one fp32 partial sum per 128-wide K block, times "
                "sa[row, kb] * sb[g, n // 128, kb], summed; bf16 out. ")

moe_grouped_fp8_gemm_contiguous = register(OpSpec(
    name="moe_grouped_fp8_gemm_contiguous", family="moe",
    summary="c[m] = fp8_gemm(a[m], sa[m], b[g], sb[g]) with g = m_indices[m]; 128-aligned segments, padding rows (-1) give 0.",
    args=(Tensor("a", ("M", "K"), ("fp8",)), Tensor("sa", ("M", "K // 128"), ("fp32",)),
          Tensor("b", ("G", "N", "K"), ("fp8",)), Tensor("sb", ("G", "cdiv(N, 128)", "K // 128"), ("fp32",)),
          Tensor("m_indices", ("M",), ("int32",))),
    outputs=(Output("c", ("M", "N"), torch.bfloat16),),
    checks=(Check("a", "M divisible by 128 (segments are 128-aligned)", lambda a, d: d["M"] % ALIGN == 0, lambda a, d: f"M={d['M']}"),
            _k_blocks("a"), _same_fp8("b", "a"), _ids_rule("m_indices", "G"),
            Check("m_indices", "one group per 128-row tile (besides -1 padding rows)",
                  lambda a, d: bool(_one_group_per_tile(a["m_indices"]).all()), lambda a, d: _mixed_tiles(a["m_indices"]))),
    metric="close", reduction="K", source=SRC,
    flops=lambda d: 2.0 * d["M"] * d["N"] * d["K"],  # padding rows included: the work a 128-tiled kernel issues
    cases=_fp8_contiguous_cases,
    doc=FP8_CONTRACT + "The FP8 form of moe_grouped_gemm_contiguous (DeepGEMM's m_grouped_fp8_gemm_nt_contiguous, "
        "which leaves padding rows unwritten: dsport's contract makes them 0). Padding rows of a and sa, and the weights "
        "and scales of groups no row names, may hold anything, NaN included (SPEC §10).",
))

moe_grouped_fp8_gemm_masked = register(OpSpec(
    name="moe_grouped_fp8_gemm_masked", family="moe",
    summary="c[g, m] = fp8_gemm(a[g, m], sa[g, m], b[g], sb[g]) for m < masked_m[g]; rows at or beyond the count are 0.",
    args=(Tensor("a", ("G", "MM", "K"), ("fp8",)), Tensor("sa", ("G", "MM", "K // 128"), ("fp32",)),
          Tensor("b", ("G", "N", "K"), ("fp8",)), Tensor("sb", ("G", "cdiv(N, 128)", "K // 128"), ("fp32",)),
          Tensor("masked_m", ("G",), ("int32",))),
    outputs=(Output("c", ("G", "MM", "N"), torch.bfloat16),),
    checks=(Check("masked_m", "0 <= masked_m[g] <= MM", lambda a, d: a["masked_m"].numel() == 0 or bool(((a["masked_m"] >= 0) & (a["masked_m"] <= d["MM"])).all()),
                  lambda a, d: f"values in [{int(a['masked_m'].min())}, {int(a['masked_m'].max())}], MM={d['MM']}"),
            _k_blocks("a"), _same_fp8("b", "a")),
    metric="close", reduction="K", source=SRC,
    flops=lambda d: 2.0 * d["G"] * d["MM"] * d["N"] * d["K"],  # every slot up to MM: the work issued
    cases=_fp8_masked_cases,
    doc=FP8_CONTRACT + "The FP8 form of moe_grouped_gemm_masked (DeepGEMM's m_grouped_fp8_gemm_nt_masked, the decode "
        "layout; rows at or beyond masked_m[g] are undefined there, 0 here). Those rows of a and sa, and the weights and "
        "scales of groups with masked_m = 0, may hold anything (SPEC §10).",
))
