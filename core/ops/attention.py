"""MLA attention: sparse (DSA stage 3) and dense, prefill and decode (SPEC §6).

Layouts follow FlashMLA. The absorbed ("MQA") form has one shared latent KV
head of d_qk = 576 = 512 latent + 64 rope dims and d_v = 512; the first d_v
dims of each KV row are also the value. Batches are flattened with offset
indices: there is no batch dim in prefill, and causality lives in the indices.
"""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from ..fp8 import FP8_FORMATS, Fp8Format
from .cache import fp8_cache_bytes
from .hostile import poison, strided_views
from ..spec import DEEPSEEK, DEEPSEEK_FULL, EDGE, POISON, TINY, Case, Check, OpSpec, Output, Param, Tensor, cdiv, randn, register

SM_SCALE = Param("sm_scale", (float,), minimum=0.0, doc="softmax scale (192^-0.5 * mscale^2 in V3.2)")
D_V = Param("d_v", (int,), 512, minimum=1, doc="value dims: the first d_v dims of each KV row")
FLASHMLA = "FlashMLA flash_mla_sparse_fwd / flash_mla_with_kvcache"
NONFINITE = ("SPEC §10: slots no index, table or length names (rows behind -1, positions at or past cache_seqlens, unused "
             "blocks) may hold anything, NaN or 0xFF bytes included, and never change the result: masked rows do not enter "
             "the P.V product, not even as p = 0. NaN in a query or a referenced key row makes that output row (out, lse) NaN.")


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
            "also lse (natural log) and max_logits (largest scaled logit). A row with no valid index: out 0, lse -inf, "
            "max_logits -inf. A repeated index is a separate softmax term.",
    args=(Tensor("q", ("T", "H", "DQK")), Tensor("kv", ("S", 1, "DQK")), Tensor("indices", ("T", 1, "k"), ("int32",)),
          SM_SCALE, D_V),
    outputs=(Output("out", ("T", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("T", "H"), torch.float32),
             Output("max_logits", ("T", "H"), torch.float32)),
    checks=(DV_RULE, _index_rule("indices", "S")),
    metric="attention", reduction="k", source=FLASHMLA,
    flops=lambda d: 2.0 * d["T"] * d["k"] * d["H"] * (d["DQK"] + d["d_v"]),
    cases=lambda: _sparse_prefill_cases(),
    doc=NONFINITE,
    # bf16 q, out and the KV rows read (each at most once), int32 indices, fp32 lse and max_logits
    bytes=lambda d: 2.0 * (d["T"] * d["H"] * (d["DQK"] + d["d_v"]) + min(d["S"], d["T"] * d["k"]) * d["DQK"])
    + 4.0 * d["T"] * (d["k"] + 2 * d["H"]),
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
            "656 B per token: 512 fp8 latent (four 128-tiles), 4 fp32 tile scales, 64 bf16 rope values. lse is natural-log, "
            "[B, H, SQ]; a query with no valid index gets out 0, lse -inf.",
    args=(Tensor("q", ("B", "SQ", "H", "DQK")), Tensor("kv_cache", ("NB", "BS", 1, "W"), ("float", "uint8")),
          Tensor("indices", ("B", "SQ", "k"), ("int32",)), SM_SCALE, D_V,
          Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS), doc="element format of a uint8 cache")),
    outputs=(Output("out", ("B", "SQ", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("B", "H", "SQ"), torch.float32)),
    checks=(DV_RULE, CACHE_RULE, _index_rule("indices", "NB * BS")),
    metric="attention", reduction="k", source=FLASHMLA,
    flops=lambda d: 2.0 * d["B"] * d["SQ"] * d["k"] * d["H"] * (d["DQK"] + d["d_v"]),
    cases=lambda: _sparse_decode_cases(),
    doc=NONFINITE,
    # bf16 q and out, one cache row per index (656 B FP8 or bf16 W), int32 indices, fp32 lse
    bytes=lambda d: 2.0 * d["B"] * d["SQ"] * d["H"] * (d["DQK"] + d["d_v"])
    + d["B"] * d["SQ"] * d["k"] * ((d["W"] if d["W"] == 656 else 2 * d["W"]) + 4) + 4.0 * d["B"] * d["SQ"] * d["H"],
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
    cases=lambda: _dense_prefill_cases(),
    doc=NONFINITE,
))


def _seqlen_rule(a, d) -> bool:
    sl = a["cache_seqlens"]
    return sl.numel() == 0 or bool(((sl >= (d["SQ"] if a["causal"] else 0)) & (sl <= d["MB"] * d["BS"])).all())


def _block_table_rule(a, d) -> bool:
    """Entries in [-1, NB); -1 (no block) only past the end of the sequence."""
    bt, sl = a["block_table"], a["cache_seqlens"]
    if bt.numel() == 0:
        return True
    used = torch.arange(d["MB"]).unsqueeze(0) < (sl.long().unsqueeze(1) + d["BS"] - 1) // d["BS"]
    return bool(((bt >= -1) & (bt < d["NB"])).all() and (bt[used] >= 0).all())


SEQLEN_RULE = Check("cache_seqlens", "SQ <= cache_seqlens[b] <= MB * BS (SQ only when causal, else 0)", _seqlen_rule,
                    lambda a, d: f"cache_seqlens in [{int(a['cache_seqlens'].min())}, {int(a['cache_seqlens'].max())}], "
                                 f"SQ={d['SQ']}, MB*BS={d['MB'] * d['BS']}")
BLOCK_TABLE_RULE = Check("block_table", "entries in [-1, NB), and >= 0 for every block below cache_seqlens[b]", _block_table_rule,
                         lambda a, d: f"entries in [{int(a['block_table'].min())}, {int(a['block_table'].max())}], NB={d['NB']}")


mla_decode_dense = register(OpSpec(
    name="mla_decode_dense", family="mla",
    summary="Dense absorbed-form decode over a paged float latent cache (block_table, cache_seqlens). With causal and "
            "SQ > 1, query i attends positions < cache_seqlens - SQ + 1 + i.",
    args=(Tensor("q", ("B", "SQ", "H", "DQK")), Tensor("kv_cache", ("NB", "BS", 1, "DQK")),
          Tensor("block_table", ("B", "MB"), ("int32",)), Tensor("cache_seqlens", ("B",), ("int32",)),
          SM_SCALE, D_V, Param("causal", (bool,), True)),
    outputs=(Output("out", ("B", "SQ", "H", "d_v"), lambda a: a["q"].dtype), Output("lse", ("B", "H", "SQ"), torch.float32)),
    checks=(DV_RULE, SEQLEN_RULE, BLOCK_TABLE_RULE),
    metric="attention", reduction="MB * BS", source="FlashMLA flash_mla_with_kvcache (dense)",
    flops=lambda d: 2.0 * d["B"] * d["SQ"] * d["H"] * (d["DQK"] + d["d_v"]) * d["MB"] * d["BS"],
    cases=lambda: _dense_decode_cases(),
    doc=NONFINITE,
))


# -- conformance cases ---------------------------------------------------------------------------------------------
# Shapes: "tiny" cases use small head dims to be readable by hand; every other case uses the V3.2 absorbed dims
# (d_qk 576, d_v 512) or MHA dims (192 / 128) with CPU-sized T, H and k. The tensor-parallel head counts are the
# 128 heads of V3.2 split over 1, 2, 4, 8 and 16 ranks.

OUTLIER_LOGIT = 120.0
"""Scaled logit of an outlier head: past 88.7, where exp() overflows fp32 without the max subtracted."""
TP_HEADS = (128, 64, 32, 16, 8)
DQK, DV, SCALE = V32.d_qk, V32.d_v, V32.softmax_scale


def _pick(gen: torch.Generator, avail: int, k: int) -> torch.Tensor:
    """k slots: min(k, avail) distinct picks from range(avail), the rest -1, in shuffled order."""
    row = torch.full((k,), -1, dtype=torch.int32)
    m = min(k, avail)
    row[:m] = torch.randperm(avail, generator=gen)[:m].int()
    return row[torch.randperm(k, generator=gen)]


def _causal_indices(gen: torch.Generator, t: int, s: int, k: int) -> torch.Tensor:
    """[T, 1, k]: query t (absolute position S - T + t) picks among keys 0 .. S - T + t."""
    rows = [_pick(gen, s - t + i + 1, k) for i in range(t)]
    return (torch.stack(rows) if rows else torch.empty(0, k, dtype=torch.int32)).unsqueeze(1)


def _prefill(t: int, h: int, s: int, k: int, dqk: int = DQK, d_v: int = DV, dtype=torch.bfloat16, edit=None):
    def make(gen):
        args = {"q": randn(gen, t, h, dqk, dtype=dtype), "kv": randn(gen, s, 1, dqk, dtype=dtype),
                "indices": _causal_indices(gen, t, s, k), "sm_scale": SCALE if dqk == DQK else dqk ** -0.5, "d_v": d_v}
        return edit(gen, args) if edit else args
    return make


def _rows_invalid(rows):
    def edit(gen, a):
        a["indices"][list(rows)] = -1
        return a
    return edit


def _duplicates(gen, a):
    idx = a["indices"][:, 0]
    idx[:, 1::2] = idx[:, 0::2][:, : idx[:, 1::2].shape[1]]  # every odd slot repeats its left neighbour
    idx[0, :] = idx[0, 0]  # one row is the same key k times
    return a


def _dense_selection(gen, a):
    s, k = a["kv"].shape[0], a["indices"].shape[-1]
    a["indices"] = torch.stack([_pick(gen, s, k) for _ in range(a["q"].shape[0])]).unsqueeze(1)
    return a


def _non_contiguous_prefill(gen, a):
    t, h, d = a["q"].shape
    a["q"] = a["q"].transpose(0, 1).contiguous().transpose(0, 1)  # [T, H, D] view of [H, T, D] storage
    a["kv"] = torch.cat([a["kv"], a["kv"][..., :64]], dim=-1)[..., :d]  # row stride d + 64
    return a


def _some_invalid(gen, idx: torch.Tensor) -> torch.Tensor:
    """About a quarter of the index slots set to -1 (kernels must skip them, not read row 0 or row -1)."""
    idx = idx.clone()
    idx[torch.rand(idx.shape, generator=gen) < 0.25] = -1
    return idx


def _spare_ends(idx: torch.Tensor, n: int) -> torch.Tensor:
    """No index names row 0 or row n - 1, so both get poisoned: a kernel that reads -1 as row 0
    (clamped) or as the last row (wrapped) reads NaN."""
    return idx.masked_fill((idx == 0) | (idx == n - 1), -1)


def _poison_unreferenced_prefill(gen, a):
    """NaN in every KV row no valid index names (SPEC §10): the result must not change."""
    a["indices"] = _some_invalid(gen, _spare_ends(a["indices"], a["kv"].shape[0]))
    named = torch.zeros(a["kv"].shape[0], dtype=torch.bool)
    named[a["indices"][a["indices"] >= 0].long()] = True
    a["kv"] = poison(a["kv"], ~named[:, None, None])
    return a


def _outlier_query(q: torch.Tensor, key: torch.Tensor, sm_scale: float, logit: float = OUTLIER_LOGIT) -> torch.Tensor:
    """A query aligned with ``key`` so that its scaled logit is about ``logit`` (outlier heads do this)."""
    k = key.double()
    return (k * (logit / (sm_scale * float((k * k).sum())))).to(q.dtype)


def _outlier_prefill(gen, a):
    """Head 0 of every query meets its first valid key at a scaled logit of ~120; head 1 at ~-100
    against every key it names but one."""
    idx, kv = a["indices"][:, 0], a["kv"][:, 0]
    for t in range(idx.shape[0]):
        ok = idx[t][idx[t] >= 0]
        if ok.numel():
            a["q"][t, 0] = _outlier_query(a["q"][t, 0], kv[ok[0]], a["sm_scale"])
            if a["q"].shape[1] > 1:
                a["q"][t, 1] = _outlier_query(a["q"][t, 1], kv[ok[-1]], a["sm_scale"], logit=100.0)
    return a


def _sparse_prefill_cases() -> list[Case]:
    op = "sparse_mla_prefill"
    cases = [
        Case(op, "tiny", _prefill(4, 2, 8, 6, dqk=80, d_v=64), tags=TINY),
        Case(op, "small", _prefill(8, 16, 64, 32)),
        Case(op, "fp32-inputs", _prefill(4, 8, 32, 16, dtype=torch.float32)),
        Case(op, "T0", _prefill(0, 16, 32, 16), tags=EDGE),
        Case(op, "T1", _prefill(1, 16, 64, 32), tags=EDGE),
        Case(op, "rows-all-invalid", _prefill(6, 8, 32, 16, edit=_rows_invalid((1, 4))), tags=EDGE,
             note="rows 1 and 4 have no valid index: out 0, lse -inf, max_logits -inf"),
        Case(op, "all-invalid", _prefill(3, 8, 16, 8, edit=_rows_invalid((0, 1, 2))), tags=EDGE,
             note="no valid index anywhere: out 0, lse -inf, never NaN"),
        Case(op, "duplicates", _prefill(5, 8, 32, 16, edit=_duplicates), tags=EDGE,
             note="each index entry is its own softmax term"),
        Case(op, "S-lt-k", _prefill(4, 8, 10, 32, edit=_dense_selection), tags=EDGE,
             note="k > S: every key selected (dense attention), the rest -1"),
        Case(op, "causal-dense", _prefill(16, 4, 16, 16), tags=EDGE, note="all causal keys selected"),
        Case(op, "non-contiguous", _prefill(6, 8, 32, 16, edit=_non_contiguous_prefill), tags=EDGE),
        Case(op, "ds-topk2048", _prefill(2, 16, 4096, 2048), tags=DEEPSEEK),
        Case(op, "ds-topk2048-h128", _prefill(4, 128, 4096, 2048), tags=DEEPSEEK_FULL),
        Case(op, "poison-nan", _prefill(2, 16, 128, 64, edit=_poison_unreferenced_prefill), tags=POISON, fill_uninitialized=True,
             note="NaN in every KV row no index names, a quarter of the slots -1: as if those rows were absent"),
        Case(op, "poison-nan-fp32", _prefill(4, 8, 32, 16, dtype=torch.float32, edit=_poison_unreferenced_prefill), tags=POISON,
             fill_uninitialized=True),
        Case(op, "outlier-logits", _prefill(2, 16, 128, 64, edit=_outlier_prefill), tags=EDGE,
             note="scaled logits of ~120 and ~100: exp overflows fp32 unless the row max is subtracted"),
        Case(op, "outlier-logits-fp32", _prefill(4, 8, 32, 16, dtype=torch.float32, edit=_outlier_prefill), tags=EDGE),
        Case(op, "strided-views", strided_views(_prefill(2, 16, 128, 64)), tags=EDGE,
             note="q, kv and indices as offset views of padded, NaN-filled buffers"),
    ]
    cases += [Case(op, f"heads-{h}", _prefill(2, h, 128, 64), tags=EDGE) for h in TP_HEADS]

    def nan_inputs(gen, a):
        """NaN in one query head of token 0 (every score of that head NaN) and in a kv row only token 1
        names (one score per head NaN): those output rows are NaN (out, lse, max_logits), the rest finite."""
        a["q"][0, 2, 7] = float("nan")
        named = [set(a["indices"][t, 0].tolist()) - {-1} for t in range(3)]
        a["kv"][min(named[1] - named[0] - named[2]), 0, 10] = float("nan")
        return a

    cases += [Case(op, "nan-query-and-row", _prefill(3, 16, 128, 64, edit=nan_inputs), tags=EDGE,
                   note="SPEC §10: NaN in a query or a named kv row gives NaN in that output row, never 0 / -inf"),
              Case(op, "nan-query-and-row-fp32", _prefill(3, 8, 64, 16, dtype=torch.float32, edit=nan_inputs), tags=EDGE)]
    return cases


def _paged(gen: torch.Generator, b: int, nb: int, bs: int, seqlens: list[int]) -> torch.Tensor:
    """A block table [B, MB] with distinct random physical blocks, -1 past each sequence's end."""
    mb = max([cdiv(s, bs) for s in seqlens] + [1])
    if sum(cdiv(s, bs) for s in seqlens) > nb:
        raise ValueError(f"case needs {sum(cdiv(s, bs) for s in seqlens)} blocks of {bs}, the cache has {nb}")
    perm = torch.randperm(nb, generator=gen).int()
    table = torch.full((b, mb), -1, dtype=torch.int32)
    used = 0
    for i, s in enumerate(seqlens):
        n = cdiv(s, bs)
        table[i, :n] = perm[used:used + n]
        used += n
    return table


def _paged_indices(gen: torch.Generator, table: torch.Tensor, seqlens: list[int], sq: int, k: int, bs: int) -> torch.Tensor:
    """[B, SQ, k] cache slots (block * BS + offset) of k random positions below each sequence's length."""
    out = torch.full((len(seqlens), sq, k), -1, dtype=torch.int32)
    for i, s in enumerate(seqlens):
        for j in range(sq):
            pos = _pick(gen, s, k)
            ok = pos >= 0
            out[i, j, ok] = table[i, pos[ok].long() // bs] * bs + pos[ok] % bs
    return out


def _cache(gen: torch.Generator, nb: int, bs: int, kind: str, dqk: int) -> torch.Tensor:
    if kind == "float":
        return randn(gen, nb, bs, 1, dqk)
    return fp8_cache_bytes(gen, nb * bs, kind).view(nb, bs, 1, 656)


def _sparse_decode(b: int, sq: int, h: int, k: int, nb: int, bs: int, seqlen: int, kind: str = "e4m3fn",
                   dqk: int = DQK, d_v: int = DV, edit=None, q_dtype: torch.dtype = torch.bfloat16):
    def make(gen):
        seqlens = [seqlen] * b
        table = _paged(gen, b, nb, bs, seqlens)
        args = {"q": randn(gen, b, sq, h, dqk, dtype=q_dtype), "kv_cache": _cache(gen, nb, bs, kind, dqk),
                "indices": _paged_indices(gen, table, seqlens, sq, k, bs),
                "sm_scale": SCALE if dqk == DQK else dqk ** -0.5, "d_v": d_v}
        if kind != "float":
            args["fmt"] = kind
        return edit(gen, args) if edit else args
    return make


def _decode_rows_invalid(gen, a):
    a["indices"][0, -1] = -1
    return a


def _decode_all_invalid(gen, a):
    a["indices"].fill_(-1)
    return a


def _decode_duplicates(gen, a):
    idx = a["indices"]
    idx[..., 1::2] = idx[..., 0::2][..., : idx[..., 1::2].shape[-1]]
    return a


def _non_contiguous_decode(gen, a):
    a["q"] = a["q"].permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)
    return a


def _poison_unreferenced_decode(gen, a):
    """Every cache slot no valid index names: 0xFF bytes (FP8 cache) or NaN (float cache)."""
    c = a["kv_cache"]
    a["indices"] = _some_invalid(gen, _spare_ends(a["indices"], c.shape[0] * c.shape[1]))
    named = torch.zeros(c.shape[0] * c.shape[1], dtype=torch.bool)
    named[a["indices"][a["indices"] >= 0].long()] = True
    a["kv_cache"] = poison(c, ~named.view(c.shape[0], c.shape[1], 1, 1))
    return a


def _decode_rows(a) -> torch.Tensor:
    """The cache as float rows [NB * BS, 576] (FP8 rows dequantized), to aim outlier queries."""
    c = a["kv_cache"]
    if c.dtype != torch.uint8:
        return c.reshape(-1, c.shape[-1]).float()
    from ...backends.reference.mla_cache import unpack64
    return unpack64(c.reshape(-1, c.shape[-1]), a.get("fmt", "e4m3fn"), "sparse_mla_decode").float()


def _outlier_decode(gen, a):
    rows, idx = _decode_rows(a), a["indices"]
    for b in range(idx.shape[0]):
        for j in range(idx.shape[1]):
            ok = idx[b, j][idx[b, j] >= 0]
            if ok.numel():
                a["q"][b, j, 0] = _outlier_query(a["q"][b, j, 0], rows[ok[0]], a["sm_scale"])
    return a


def _sparse_decode_cases() -> list[Case]:
    op = "sparse_mla_decode"
    cases = [
        Case(op, "tiny-float", _sparse_decode(2, 1, 2, 6, 6, 4, 12, "float", dqk=80, d_v=64), tags=TINY),
        Case(op, "fp8-page64", _sparse_decode(2, 1, 16, 64, 4, 64, 100)),
        Case(op, "fp8-page1", _sparse_decode(2, 1, 16, 32, 96, 1, 40), tags=EDGE),
        Case(op, "fnuz-page64", _sparse_decode(2, 1, 16, 64, 4, 64, 100, "e4m3fnuz"), tags=EDGE),
        Case(op, "fp8-fp32-q", _sparse_decode(2, 1, 16, 64, 4, 64, 100, q_dtype=torch.float32), tags=EDGE,
             note="fp32 queries over the FP8 cache (its rope part stays bf16), as a float32 model decodes"),
        Case(op, "float-576", _sparse_decode(2, 1, 16, 64, 4, 64, 100, "float")),
        Case(op, "float-page1", _sparse_decode(2, 1, 8, 16, 48, 1, 20, "float"), tags=EDGE),
        Case(op, "mtp-sq2", _sparse_decode(2, 2, 16, 32, 4, 64, 100)),
        Case(op, "B0", _sparse_decode(0, 1, 16, 32, 2, 64, 64), tags=EDGE),
        Case(op, "T1", _sparse_decode(1, 1, 16, 32, 2, 64, 64), tags=EDGE),
        Case(op, "rows-all-invalid", _sparse_decode(2, 2, 8, 32, 4, 64, 100, edit=_decode_rows_invalid), tags=EDGE,
             note="batch 0's last query has no valid index: out 0, lse -inf"),
        Case(op, "all-invalid", _sparse_decode(2, 1, 8, 32, 4, 64, 100, edit=_decode_all_invalid), tags=EDGE,
             note="every index -1: out 0, lse -inf, never NaN"),
        Case(op, "duplicates", _sparse_decode(2, 1, 8, 32, 4, 64, 100, edit=_decode_duplicates), tags=EDGE),
        Case(op, "S-lt-k", _sparse_decode(2, 1, 8, 64, 4, 16, 20), tags=EDGE, note="k > sequence length: padded with -1"),
        Case(op, "non-contiguous", _sparse_decode(2, 2, 8, 32, 4, 64, 100, edit=_non_contiguous_decode), tags=EDGE),
        Case(op, "ds-topk2048", _sparse_decode(2, 1, 16, 2048, 80, 64, 2500), tags=DEEPSEEK),
        Case(op, "ds-topk2048-h128", _sparse_decode(4, 1, 128, 2048, 192, 64, 3000), tags=DEEPSEEK_FULL),
        Case(op, "poison-fp8-0xff", _sparse_decode(2, 1, 16, 64, 4, 64, 100, edit=_poison_unreferenced_decode), tags=POISON,
             fill_uninitialized=True, note="0xFF bytes (NaN latents, scales, rope) in every slot no index names"),
        Case(op, "poison-float-nan", _sparse_decode(2, 2, 8, 32, 4, 64, 100, "float", edit=_poison_unreferenced_decode),
             tags=POISON, fill_uninitialized=True),
        Case(op, "outlier-logits", _sparse_decode(2, 1, 16, 64, 4, 64, 100, edit=_outlier_decode), tags=EDGE,
             note="head 0 at a scaled logit of ~120"),
        Case(op, "outlier-logits-float", _sparse_decode(2, 1, 16, 64, 4, 64, 100, "float", edit=_outlier_decode), tags=EDGE),
        Case(op, "strided-views", strided_views(_sparse_decode(2, 1, 16, 64, 4, 64, 100)), tags=EDGE,
             note="q, the FP8 cache and indices as offset views of padded, poisoned buffers"),
    ]
    cases += [Case(op, f"heads-{h}", _sparse_decode(1, 1, h, 64, 2, 64, 128), tags=EDGE) for h in TP_HEADS]
    return cases


def _dense_prefill(t: int, h: int, s: int, dqk: int = 192, dv: int = 128, edit=None):
    def make(gen):
        args = {"q": randn(gen, t, h, dqk), "k": randn(gen, s, h, dqk), "v": randn(gen, s, h, dv), "sm_scale": SCALE}
        return edit(gen, args) if edit else args
    return make


def _non_contiguous_dense(gen, a):
    for name in ("q", "k", "v"):
        a[name] = a[name].transpose(0, 1).contiguous().transpose(0, 1)
    return a


def _absorbed_shared_kv(gen, a):
    """H heads sharing one [S, 576] latent KV: expanded (stride-0) views."""
    s, h = a["k"].shape[:2]
    kv = randn(gen, s, 1, DQK)
    a["q"] = randn(gen, a["q"].shape[0], h, DQK)
    a["k"], a["v"] = kv.expand(s, h, DQK), kv[..., :DV].expand(s, h, DV)
    return a


def _outlier_dense(gen, a):
    for t in range(a["q"].shape[0]):
        a["q"][t, 0] = _outlier_query(a["q"][t, 0], a["k"][0, 0], a["sm_scale"])
    return a


def _dense_prefill_cases() -> list[Case]:
    op = "mla_prefill_dense"
    cases = [
        Case(op, "tiny", _dense_prefill(3, 2, 5, 24, 16), tags=TINY),
        Case(op, "no-prefix", _dense_prefill(16, 8, 16)),
        Case(op, "prefix", _dense_prefill(8, 8, 40)),
        Case(op, "T0", _dense_prefill(0, 8, 12), tags=EDGE, note="nothing to compute, a prefix of 12"),
        Case(op, "T0-S0", _dense_prefill(0, 8, 0), tags=EDGE),
        Case(op, "T1", _dense_prefill(1, 8, 33), tags=EDGE),
        Case(op, "non-contiguous", _dense_prefill(6, 4, 10, edit=_non_contiguous_dense), tags=EDGE),
        Case(op, "absorbed-576", _dense_prefill(6, 4, 10, edit=_absorbed_shared_kv), tags=EDGE),
        Case(op, "ds-mha-512", _dense_prefill(64, 16, 512), tags=DEEPSEEK),
        Case(op, "ds-mha-h128", _dense_prefill(64, 128, 1024), tags=DEEPSEEK_FULL),
        Case(op, "outlier-logits", _dense_prefill(6, 4, 10, edit=_outlier_dense), tags=EDGE,
             note="head 0 of every query meets key 0 at a scaled logit of ~120"),
        Case(op, "outlier-logits-prefix", _dense_prefill(8, 4, 40, edit=_outlier_dense), tags=EDGE),
        Case(op, "strided-views", strided_views(_dense_prefill(6, 4, 10)), tags=EDGE),
    ]
    cases += [Case(op, f"heads-{h}", _dense_prefill(4, h, 12), tags=EDGE) for h in TP_HEADS]
    return cases


def _dense_decode(seqlens: list[int], sq: int, h: int, nb: int, bs: int, causal: bool = True, dqk: int = DQK,
                  d_v: int = DV, extra_blocks: int = 0, edit=None):
    def make(gen):
        table = _paged(gen, len(seqlens), nb, bs, seqlens)
        if extra_blocks:  # unused trailing columns, -1
            table = torch.cat([table, torch.full((len(seqlens), extra_blocks), -1, dtype=torch.int32)], dim=1)
        args = {"q": randn(gen, len(seqlens), sq, h, dqk), "kv_cache": randn(gen, nb, bs, 1, dqk),
                "block_table": table, "cache_seqlens": torch.tensor(seqlens, dtype=torch.int32),
                "sm_scale": SCALE if dqk == DQK else dqk ** -0.5, "d_v": d_v, "causal": causal}
        return edit(gen, args) if edit else args
    return make


def _poison_past_seqlens(gen, a):
    """NaN in every cache slot at or past cache_seqlens: the tail of each last block and every block
    no table entry names."""
    c, bt, sl = a["kv_cache"], a["block_table"], a["cache_seqlens"]
    nb, bs = c.shape[:2]
    live = torch.zeros(nb, bs, dtype=torch.bool)
    for b in range(bt.shape[0]):
        for p in range(int(sl[b])):
            live[int(bt[b, p // bs]), p % bs] = True
    a["kv_cache"] = poison(c, ~live[:, :, None, None])
    return a


def _outlier_dense_decode(gen, a):
    c, bt, sl = a["kv_cache"], a["block_table"], a["cache_seqlens"]
    for b in range(bt.shape[0]):
        if int(sl[b]):
            a["q"][b, :, 0] = _outlier_query(a["q"][b, 0, 0], c[int(bt[b, 0]), 0, 0], a["sm_scale"])
    return a


def _dense_decode_cases() -> list[Case]:
    op = "mla_decode_dense"
    cases = [
        Case(op, "tiny", _dense_decode([5, 12], 1, 2, 8, 4, dqk=80, d_v=64), tags=TINY),
        Case(op, "page64", _dense_decode([70, 130], 1, 16, 6, 64)),
        Case(op, "page1", _dense_decode([9, 16], 1, 8, 32, 1), tags=EDGE),
        Case(op, "mtp-causal", _dense_decode([20, 33], 3, 8, 16, 4)),
        Case(op, "mtp-non-causal", _dense_decode([20, 33], 3, 8, 16, 4, causal=False)),
        Case(op, "zero-seqlen", _dense_decode([0, 9], 1, 8, 6, 4, causal=False), tags=EDGE,
             note="batch 0 has an empty cache: out 0, lse -inf"),
        Case(op, "block-table-padding", _dense_decode([5, 17], 1, 8, 10, 4, extra_blocks=3), tags=EDGE),
        Case(op, "B0", _dense_decode([], 1, 8, 4, 64), tags=EDGE),
        Case(op, "non-contiguous", _dense_decode([20, 33], 2, 8, 16, 4, edit=_non_contiguous_decode), tags=EDGE),
        Case(op, "ds-2k", _dense_decode([2048, 1500], 1, 16, 64, 64), tags=DEEPSEEK),
        Case(op, "ds-h128-4k", _dense_decode([4096, 3000], 1, 128, 128, 64), tags=DEEPSEEK_FULL),
        Case(op, "poison-nan", _dense_decode([5, 17], 1, 8, 10, 4, extra_blocks=3, edit=_poison_past_seqlens), tags=POISON,
             fill_uninitialized=True, note="NaN at and past cache_seqlens and in every unused block"),
        Case(op, "poison-nan-mtp", _dense_decode([20, 33], 3, 8, 16, 4, extra_blocks=1, edit=_poison_past_seqlens),
             tags=POISON, fill_uninitialized=True),
        Case(op, "poison-nan-page64", _dense_decode([70, 130], 1, 16, 6, 64, edit=_poison_past_seqlens), tags=POISON,
             fill_uninitialized=True),
        Case(op, "outlier-logits", _dense_decode([20, 33], 3, 8, 16, 4, edit=_outlier_dense_decode), tags=EDGE,
             note="head 0 meets position 0 at a scaled logit of ~120"),
        Case(op, "outlier-logits-page64", _dense_decode([70, 130], 1, 16, 6, 64, edit=_outlier_dense_decode), tags=EDGE),
        Case(op, "strided-views", strided_views(_dense_decode([20, 33], 2, 8, 16, 4)), tags=EDGE,
             note="q, the cache, block_table and cache_seqlens as offset views of padded, poisoned buffers"),
    ]
    cases += [Case(op, f"heads-{h}", _dense_decode([40], 1, h, 2, 64), tags=EDGE) for h in TP_HEADS]
    return cases
