"""Conformance cases for ops whose spec does not (yet) carry its own.

An op spec's ``cases()`` is the first source; the cases here are added under
ids the spec does not use. Every case is tagged: ``quick`` (the default run),
``full`` (everything), plus ``tiny``, ``edge`` (SPEC §8) or ``deepseek``
(real V3.2 head dims and widths). DeepSeek-shaped cases that are cheap on a
CPU are also quick: the real widths (576/512 latent, 64x128 indexer heads,
256 experts) are where porting bugs hide.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dsport.core.constants import DEEPSEEK_V32 as V
from dsport.core.fp8 import FP8_FORMATS
from dsport.core.spec import Case, OpSpec

Gen = torch.Generator
QUICK = frozenset({"quick", "full"})
TINY = frozenset({"quick", "full", "tiny"})
EDGE = frozenset({"quick", "full", "edge"})
DS = frozenset({"quick", "full", "deepseek"})
DS_FULL = frozenset({"full", "deepseek"})
SM = V.softmax_scale


def _randn(g: Gen, *shape: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _fp8(g: Gen, *shape: int, fmt: str = "e4m3fn") -> torch.Tensor:
    f = FP8_FORMATS[fmt]
    return (torch.randn(*shape, generator=g) * f.max / 8).clamp(-f.max, f.max).to(f.dtype)


def _pow2(g: Gen, *shape: int, lo: int = -8, hi: int = 0) -> torch.Tensor:
    return torch.exp2(torch.randint(lo, hi, shape, generator=g).float())


def _bytes(t: torch.Tensor, rows: int) -> torch.Tensor:
    return t.contiguous().view(torch.uint8).reshape(rows, -1)


# -- norms, rotary -------------------------------------------------------------------
def _norm_cases() -> dict[str, list[Case]]:
    def with_nonfinite(g):
        x = _randn(g, 4, 128, dtype=torch.float32)
        x[1, 3], x[2, 5] = float("nan"), float("inf")
        return {"x": x, "w": _randn(g, 128, dtype=torch.float32)}

    rms = [
        Case("rms_norm", "tiny", lambda g: {"x": _randn(g, 4, 64), "w": _randn(g, 64)}, TINY),
        Case("rms_norm", "fp32", lambda g: {"x": _randn(g, 3, 5, 256, dtype=torch.float32), "w": _randn(g, 256, dtype=torch.float32)}),
        Case("rms_norm", "residual", lambda g: {"x": _randn(g, 6, 128), "w": _randn(g, 128), "residual": _randn(g, 6, 128)}),
        Case("rms_norm", "T0", lambda g: {"x": _randn(g, 0, 128), "w": _randn(g, 128)}, EDGE),
        Case("rms_norm", "zeros-row", lambda g: {"x": torch.zeros(2, 128, dtype=torch.bfloat16), "w": _randn(g, 128)}, EDGE),
        Case("rms_norm", "non-contiguous", lambda g: {"x": _randn(g, 8, 256)[:, ::2], "w": _randn(g, 128)}, EDGE),
        Case("rms_norm", "nan-inf", with_nonfinite, EDGE, note="NaN/Inf rows are reported, not hidden"),
        Case("rms_norm", "ds-kv-norm", lambda g: {"x": _randn(g, 8, V.kv_lora_rank), "w": _randn(g, V.kv_lora_rank)}, DS),
        Case("rms_norm", "ds-hidden", lambda g: {"x": _randn(g, 4, V.dim), "w": _randn(g, V.dim), "residual": _randn(g, 4, V.dim)}, DS_FULL),
    ]
    ln = [
        Case("layer_norm", "tiny", lambda g: {"x": _randn(g, 4, 128, dtype=torch.float32), "w": _randn(g, 128, dtype=torch.float32),
                                              "b": _randn(g, 128, dtype=torch.float32)}, TINY),
        Case("layer_norm", "bf16", lambda g: {"x": _randn(g, 6, 128, scale=4.0), "w": _randn(g, 128), "b": _randn(g, 128)}),
        Case("layer_norm", "T0", lambda g: {"x": _randn(g, 0, 128), "w": _randn(g, 128), "b": _randn(g, 128)}, EDGE),
        Case("layer_norm", "ds-index-k", lambda g: {"x": _randn(g, 32, V.index_head_dim), "w": _randn(g, V.index_head_dim),
                                                    "b": _randn(g, V.index_head_dim)}, DS),
    ]
    return {"rms_norm": rms, "layer_norm": ln}


def _plain_freqs(d: int) -> torch.Tensor:
    return V.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)


def _rope_case(t: int, h: int, d: int, interleaved: bool, max_pos: int = 4096, dtype=torch.bfloat16) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        return {"x": _randn(g, t, h, d, dtype=dtype), "positions": torch.randint(0, max_pos, (t,), generator=g),
                "freqs": (_plain_freqs(d) / 4).float(), "interleaved": interleaved}
    return make


def _rotary_cases() -> dict[str, list[Case]]:
    yarn = [
        Case("yarn_freqs", "v32", lambda g: {}, TINY),
        Case("yarn_freqs", "small", lambda g: {"dim": 16, "theta": 500.0, "factor": 4.0, "original_seq_len": 64}),
    ]
    rope = [
        Case("rope", "tiny-interleaved", _rope_case(3, 2, 16, True), TINY),
        Case("rope", "tiny-rotate-half", _rope_case(3, 2, 16, False), TINY),
        Case("rope", "fp32", _rope_case(5, 3, 64, False, dtype=torch.float32)),
        Case("rope", "T0", _rope_case(0, 2, 64, False), EDGE),
        Case("rope", "long-positions", _rope_case(4, 2, 64, True, max_pos=160_000), EDGE),
        Case("rope", "ds-mla-pe", _rope_case(4, 16, V.qk_rope_head_dim, True), DS,
             note="MLA: the 64 rope dims of each head, interleaved"),
        Case("rope", "ds-indexer", _rope_case(4, V.index_n_heads, V.qk_rope_head_dim, False), DS,
             note="indexer: the first 64 of 128 dims, rotate-half (the 2025-11-17 fix)"),
    ]

    def nonfinite(g):
        x = _randn(g, 3, 128, dtype=torch.float32)
        x[0, 0] = float("inf")
        return {"x": x}

    had = [
        Case("hadamard", "tiny", lambda g: {"x": _randn(g, 3, 128, dtype=torch.float32)}, TINY),
        Case("hadamard", "d16", lambda g: {"x": _randn(g, 5, 16)}),
        Case("hadamard", "T0", lambda g: {"x": _randn(g, 0, 128)}, EDGE),
        Case("hadamard", "outlier", lambda g: {"x": torch.cat([_randn(g, 1, 127), torch.full((1, 1), 300.0)], 1).bfloat16()}, EDGE),
        Case("hadamard", "non-contiguous", lambda g: {"x": _randn(g, 128, 4).t()}, EDGE),
        Case("hadamard", "nan-inf", nonfinite, EDGE, note="an Inf spreads over its row; reported, not hidden"),
        Case("hadamard", "ds-index-q", lambda g: {"x": _randn(g, 4, V.index_n_heads, V.index_head_dim)}, DS),
    ]
    return {"yarn_freqs": yarn, "rope": rope, "hadamard": had}


# -- DSA: indexer, top-k -----------------------------------------------------------------
def _causal(t: int, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(t, dtype=torch.int32), torch.arange(prefix + 1, prefix + t + 1, dtype=torch.int32)


def _indexer(t: int, h: int, d: int, s: int, fp8: str | None = None, prefix: int | None = None) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        ks, ke = _causal(t, s - t if prefix is None else prefix)
        out = {"weights": (torch.randn(t, h, generator=g) * h ** -0.5 * d ** -0.5).float(), "ks": ks, "ke": ke}
        if fp8:
            out.update(q=_fp8(g, t, h, d, fmt=fp8), k=_fp8(g, s, d, fmt=fp8), k_scale=_pow2(g, s))
        else:
            out.update(q=_randn(g, t, h, d), k=_randn(g, s, d))
        return out
    return make


def _index_cache_bytes(g: Gen, nb: int, bs: int, fmt: str = "e4m3fn") -> torch.Tensor:
    k8 = _fp8(g, nb, bs * 128, fmt=fmt)
    sc = _pow2(g, nb, bs)
    return torch.cat([_bytes(k8, nb), _bytes(sc, nb)], 1).reshape(nb, bs, 132)


def _paged_indexer(b: int, h: int, nb: int, bs: int, mb: int) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        bt = torch.randperm(nb, generator=g)[: b * mb].reshape(b, mb).int()
        sl = torch.randint(1, mb * bs + 1, (b,), generator=g).int()
        return {"q": _fp8(g, b, h, 128), "k_cache": _index_cache_bytes(g, nb, bs), "weights": torch.randn(b, h, generator=g) * 0.01,
                "block_table": bt, "seqlens": sl}
    return make


def _dsa_cases() -> dict[str, list[Case]]:
    def empty_rows(g):
        c = _indexer(4, 4, 32, 8, prefix=4)(g)
        c["ks"][1], c["ke"][1] = 3, 3
        return c

    idx = [
        Case("indexer_logits", "tiny", _indexer(4, 4, 32, 8), TINY),
        Case("indexer_logits", "fp8", _indexer(6, 8, 128, 16, "e4m3fn")),
        Case("indexer_logits", "fp8-fnuz", _indexer(6, 8, 128, 16, "e4m3fnuz")),
        Case("indexer_logits", "T0", _indexer(0, 4, 32, 8), EDGE),
        Case("indexer_logits", "T1", _indexer(1, 4, 32, 8), EDGE),
        Case("indexer_logits", "empty-range", empty_rows, EDGE),
        Case("indexer_logits", "ds-prefill-fp8", _indexer(8, V.index_n_heads, V.index_head_dim, 64, "e4m3fn"), DS),
        Case("indexer_logits", "ds-prefill-bf16", _indexer(8, V.index_n_heads, V.index_head_dim, 64), DS),
    ]
    paged = [
        Case("indexer_logits_paged", "page64", _paged_indexer(2, 8, 5, 64, 2), TINY),
        Case("indexer_logits_paged", "page1", _paged_indexer(2, 4, 12, 1, 5), EDGE),
        Case("indexer_logits_paged", "ds-decode", _paged_indexer(2, V.index_n_heads, 8, 64, 3), DS),
    ]
    pack = [
        Case("index_cache_pack", "tiny", lambda g: {"k": _randn(g, 2, 64, 128)}, TINY),
        Case("index_cache_pack", "page1-fnuz", lambda g: {"k": _randn(g, 5, 1, 128), "fmt": "e4m3fnuz"}, EDGE),
        Case("index_cache_pack", "zeros", lambda g: {"k": torch.zeros(1, 4, 128)}, EDGE),
    ]
    unpack = [
        Case("index_cache_unpack", "tiny", lambda g: {"cache": _index_cache_bytes(g, 2, 64)}, TINY),
        Case("index_cache_unpack", "page1-fnuz", lambda g: {"cache": _index_cache_bytes(g, 5, 1, "e4m3fnuz"), "fmt": "e4m3fnuz"}, EDGE),
    ]

    def tk(t: int, s: int, k: int, causal: bool = False, levels: int | None = None, prefix: int = 0):
        def make(g):
            lg = torch.randn(t, s, generator=g)
            if levels:  # few distinct values: ties straddle the top-k boundary
                lg = torch.randint(0, levels, (t, s), generator=g).float()
            out: dict[str, Any] = {"logits": lg, "k": k}
            if causal:
                out["ks"], out["ke"] = _causal(t, prefix)
            return out
        return make

    def masked_row(g):
        c = tk(4, 32, 8, causal=True, prefix=20)(g)
        c["ks"][2] = c["ke"][2]
        return c

    topk = [
        Case("topk_select", "tiny", tk(4, 64, 8), TINY),
        Case("topk_select", "causal-S-lt-k", tk(6, 12, 8, causal=True), EDGE, note="rows with fewer than k valid: -1 padding, dense selection"),
        Case("topk_select", "ties", tk(5, 64, 8, levels=4), EDGE),
        Case("topk_select", "empty-row", masked_row, EDGE),
        Case("topk_select", "T0", tk(0, 16, 4), EDGE),
        Case("topk_select", "ds-2048", tk(3, 2560, V.index_topk, causal=True, prefix=2300), DS),
        Case("topk_select", "ds-long", tk(4, 32768, V.index_topk), DS_FULL),
    ]
    return {"indexer_logits": idx, "indexer_logits_paged": paged, "index_cache_pack": pack, "index_cache_unpack": unpack, "topk_select": topk}


# -- attention ----------------------------------------------------------------------------
def _sparse_indices(g: Gen, t: int, s: int, k: int, invalid: float = 0.2, causal: bool = False) -> torch.Tensor:
    out = torch.full((t, 1, k), -1, dtype=torch.int32)
    for i in range(t):
        hi = min(s, s - t + i + 1) if causal else s
        sel = torch.randperm(hi, generator=g)[:k]
        out[i, 0, : sel.numel()] = sel.int()
    drop = torch.rand(t, 1, k, generator=g) < invalid
    return torch.where(drop, torch.full_like(out, -1), out)


def _sparse_prefill(t: int, h: int, dqk: int, dv: int, s: int, k: int, **kw) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        return {"q": _randn(g, t, h, dqk), "kv": _randn(g, s, 1, dqk), "indices": _sparse_indices(g, t, s, k, **kw),
                "sm_scale": dqk ** -0.5 if dqk != V.d_qk else SM, "d_v": dv}
    return make


def _mla_cache_bytes(g: Gen, n: int, fmt: str = "e4m3fn") -> torch.Tensor:
    lat = _bytes(_fp8(g, n, 512, fmt=fmt), n)
    sc = _bytes(_pow2(g, n, 4, lo=-10, hi=-4), n)
    pe = _bytes(_randn(g, n, 64), n)
    return torch.cat([lat, sc, pe], 1)


def _sparse_decode(b: int, sq: int, h: int, nb: int, bs: int, k: int, fp8: str | None, dqk: int = 576, dv: int = 512):
    def make(g):
        if fp8:
            cache = _mla_cache_bytes(g, nb * bs, fp8).reshape(nb, bs, 1, 656)
        else:
            cache = _randn(g, nb, bs, 1, dqk)
        idx = torch.randint(0, nb * bs, (b, sq, k), generator=g).int()
        idx[torch.rand(b, sq, k, generator=g) < 0.2] = -1
        return {"q": _randn(g, b, sq, h, dqk), "kv_cache": cache, "indices": idx, "sm_scale": SM if dqk == 576 else dqk ** -0.5,
                "d_v": dv, "fmt": fp8 or "e4m3fn"}
    return make


def _dense_prefill(t: int, s: int, h: int, dqk: int, dv: int) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        return {"q": _randn(g, t, h, dqk), "k": _randn(g, s, h, dqk), "v": _randn(g, s, h, dv), "sm_scale": dqk ** -0.5}
    return make


def _dense_decode(b: int, sq: int, h: int, dqk: int, dv: int, nb: int, bs: int, mb: int, causal: bool = True, seqlens=None):
    def make(g):
        bt = torch.randperm(nb, generator=g)[: b * mb].reshape(b, mb).int()
        sl = torch.tensor(seqlens, dtype=torch.int32) if seqlens is not None else torch.randint(sq, mb * bs + 1, (b,), generator=g).int()
        return {"q": _randn(g, b, sq, h, dqk), "kv_cache": _randn(g, nb, bs, 1, dqk), "block_table": bt, "cache_seqlens": sl,
                "sm_scale": dqk ** -0.5, "d_v": dv, "causal": causal}
    return make


def _attention_cases() -> dict[str, list[Case]]:
    def all_invalid(g):
        c = _sparse_prefill(4, 4, 96, 64, 32, 8)(g)
        c["indices"][1] = -1
        return c

    def duplicates(g):
        c = _sparse_prefill(3, 4, 96, 64, 32, 8, invalid=0.0)(g)
        c["indices"][:, :, 4:] = c["indices"][:, :, :4]
        return c

    sp = [
        Case("sparse_mla_prefill", "tiny", _sparse_prefill(3, 4, 96, 64, 32, 8), TINY),
        Case("sparse_mla_prefill", "all-invalid-row", all_invalid, EDGE),
        Case("sparse_mla_prefill", "duplicate-indices", duplicates, EDGE),
        Case("sparse_mla_prefill", "T0", _sparse_prefill(0, 4, 96, 64, 32, 8), EDGE),
        Case("sparse_mla_prefill", "causal-indices", _sparse_prefill(8, 2, 96, 64, 8, 8, invalid=0.0, causal=True), EDGE),
        Case("sparse_mla_prefill", "ds-h16", _sparse_prefill(4, 16, V.d_qk, V.d_v, 256, 64), DS,
             note="576/512 latent, 128 heads over 8-way TP"),
    ] + [Case("sparse_mla_prefill", f"ds-h{h}", _sparse_prefill(4, h, V.d_qk, V.d_v, 512, 128), DS_FULL) for h in (128, 64, 32, 8)]
    sd = [
        Case("sparse_mla_decode", "bf16-cache", _sparse_decode(2, 1, 4, 4, 16, 8, None, dqk=96, dv=64), TINY),
        Case("sparse_mla_decode", "fp8-cache", _sparse_decode(2, 2, 4, 2, 64, 32, "e4m3fn"), DS),
        Case("sparse_mla_decode", "fp8-cache-fnuz", _sparse_decode(1, 1, 4, 2, 64, 16, "e4m3fnuz"), DS),
        Case("sparse_mla_decode", "page1", _sparse_decode(2, 1, 4, 40, 1, 8, "e4m3fn"), EDGE),
        Case("sparse_mla_decode", "ds-h128", _sparse_decode(2, 1, 128, 4, 64, 128, "e4m3fn"), DS_FULL),
    ]
    dp = [
        Case("mla_prefill_dense", "tiny", _dense_prefill(5, 5, 2, 48, 32), TINY),
        Case("mla_prefill_dense", "prefix", _dense_prefill(3, 9, 2, 48, 32), EDGE),
        Case("mla_prefill_dense", "T1", _dense_prefill(1, 6, 2, 48, 32), EDGE),
        Case("mla_prefill_dense", "T0", _dense_prefill(0, 4, 2, 48, 32), EDGE),
        Case("mla_prefill_dense", "ds-mha", _dense_prefill(16, 24, 16, V.qk_head_dim, V.v_head_dim), DS),
    ]
    dd = [
        Case("mla_decode_dense", "tiny", _dense_decode(2, 1, 4, 96, 64, 6, 4, 3), TINY),
        Case("mla_decode_dense", "causal-sq2", _dense_decode(2, 2, 4, 96, 64, 6, 4, 3), EDGE),
        Case("mla_decode_dense", "page1", _dense_decode(2, 1, 2, 96, 64, 20, 1, 9), EDGE),
        Case("mla_decode_dense", "empty-seq", _dense_decode(2, 1, 2, 96, 64, 4, 4, 2, causal=False, seqlens=[0, 5]), EDGE),
        Case("mla_decode_dense", "ds-page64", _dense_decode(2, 1, 16, V.d_qk, V.d_v, 4, 64, 2), DS),
    ]
    pack = [
        Case("mla_cache_pack", "tiny", lambda g: {"kv": _randn(g, 4, 576)}, TINY),
        Case("mla_cache_pack", "fnuz", lambda g: {"kv": _randn(g, 3, 576, scale=30.0), "fmt": "e4m3fnuz"}),
        Case("mla_cache_pack", "zeros", lambda g: {"kv": torch.zeros(2, 576)}, EDGE),
        Case("mla_cache_pack", "N0", lambda g: {"kv": _randn(g, 0, 576)}, EDGE),
    ]
    unpack = [
        Case("mla_cache_unpack", "tiny", lambda g: {"cache": _mla_cache_bytes(g, 4)}, TINY),
        Case("mla_cache_unpack", "fnuz", lambda g: {"cache": _mla_cache_bytes(g, 3, "e4m3fnuz"), "fmt": "e4m3fnuz"}),
    ]
    return {"sparse_mla_prefill": sp, "sparse_mla_decode": sd, "mla_prefill_dense": dp, "mla_decode_dense": dd,
            "mla_cache_pack": pack, "mla_cache_unpack": unpack}


# -- MoE ----------------------------------------------------------------------------------
def _gate(t: int, d: int, e: int, n_group: int, topk_group: int, topk: int, bias: bool = True, ties: bool = False,
          score_func: str = "sigmoid") -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        w = _randn(g, e, d, dtype=torch.float32, scale=d ** -0.5)
        if ties:  # pairs of identical experts: equal scores, any tied choice is right
            w[1::2] = w[0::2]
        return {"x": _randn(g, t, d, dtype=torch.float32), "weight": w,
                "bias": (torch.randn(e, generator=g) * 0.1) if bias else None,
                "n_group": n_group, "topk_group": topk_group, "topk": topk, "route_scale": V.route_scale, "score_func": score_func}
    return make


def _experts(t: int, d: int, e: int, i: int, k: int, ids: Callable[[Gen], torch.Tensor] | None = None):
    def make(g):
        chosen = ids(g) if ids else torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]).int() if t else torch.zeros(0, k, dtype=torch.int32)
        return {"x": _randn(g, t, d), "ids": chosen, "weights": torch.rand(t, k, generator=g),
                "w1": _randn(g, e, i, d, scale=d ** -0.5), "w3": _randn(g, e, i, d, scale=d ** -0.5), "w2": _randn(g, e, d, i, scale=i ** -0.5)}
    return make


def _contiguous(counts: list[int], k: int, n: int) -> Callable[[Gen], dict[str, Any]]:
    def make(g):
        segs = []
        for gi, c in enumerate(counts):
            if c == 0:
                continue
            seg = torch.full((math.ceil(c / 128) * 128,), -1, dtype=torch.int32)
            seg[:c] = gi
            segs.append(seg)
        mi = torch.cat(segs) if segs else torch.zeros(0, dtype=torch.int32)
        return {"a": _randn(g, mi.numel(), k), "b": _randn(g, len(counts), n, k, scale=k ** -0.5), "m_indices": mi}
    return make


def _moe_cases() -> dict[str, list[Case]]:
    gate = [
        Case("moe_gate", "tiny", _gate(4, 32, 16, 4, 2, 4), TINY),
        Case("moe_gate", "no-bias", _gate(4, 32, 16, 4, 2, 4, bias=False)),
        Case("moe_gate", "ties", _gate(6, 32, 16, 4, 2, 4, bias=False, ties=True), EDGE),
        Case("moe_gate", "softmax", _gate(4, 32, 16, 1, 1, 4, bias=False, score_func="softmax")),
        Case("moe_gate", "T0", _gate(0, 32, 16, 4, 2, 4), EDGE),
        Case("moe_gate", "ds-256", _gate(8, 256, V.n_routed_experts, V.n_expert_groups, V.n_limited_groups, V.n_activated_experts), DS),
        Case("moe_gate", "ds-hidden", _gate(8, V.dim, V.n_routed_experts, V.n_expert_groups, V.n_limited_groups, V.n_activated_experts), DS_FULL),
    ]
    experts = [
        Case("moe_experts", "tiny", _experts(4, 32, 4, 16, 2), TINY),
        Case("moe_experts", "empty-expert", _experts(4, 32, 4, 16, 2, lambda g: torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2]], dtype=torch.int32)), EDGE),
        Case("moe_experts", "one-expert", _experts(5, 32, 4, 16, 1, lambda g: torch.zeros(5, 1, dtype=torch.int32)), EDGE),
        Case("moe_experts", "ids-minus-one", _experts(3, 32, 4, 16, 2, lambda g: torch.tensor([[0, -1], [-1, -1], [3, 1]], dtype=torch.int32)), EDGE),
        Case("moe_experts", "T0", _experts(0, 32, 4, 16, 2), EDGE),
        Case("moe_experts", "ds-lite", _experts(4, 512, 8, 256, V.n_activated_experts), DS),
    ]
    cont = [
        Case("moe_grouped_gemm_contiguous", "tiny", _contiguous([100, 128], 64, 32), TINY),
        Case("moe_grouped_gemm_contiguous", "empty-group", _contiguous([5, 0, 130], 64, 32), EDGE),
        Case("moe_grouped_gemm_contiguous", "ds-down", _contiguous([130, 20], V.moe_inter_dim, 256), DS_FULL),
    ]

    def masked(gsz: int, mm: int, k: int, n: int, counts: list[int]):
        def make(g):
            return {"a": _randn(g, gsz, mm, k), "b": _randn(g, gsz, n, k, scale=k ** -0.5), "masked_m": torch.tensor(counts, dtype=torch.int32)}
        return make

    mask = [
        Case("moe_grouped_gemm_masked", "tiny", masked(3, 8, 64, 16, [8, 0, 3]), TINY),
        Case("moe_grouped_gemm_masked", "all-empty", masked(2, 4, 64, 16, [0, 0]), EDGE),
        Case("moe_grouped_gemm_masked", "ds-up", masked(2, 32, 512, V.moe_inter_dim // 8, [32, 7]), DS),
    ]
    return {"moe_gate": gate, "moe_experts": experts, "moe_grouped_gemm_contiguous": cont, "moe_grouped_gemm_masked": mask}


_EXTRA: dict[str, list[Case]] | None = None


def extra_cases() -> dict[str, list[Case]]:
    global _EXTRA
    if _EXTRA is None:
        _EXTRA = {**_norm_cases(), **_rotary_cases(), **_dsa_cases(), **_attention_cases(), **_moe_cases()}
    return _EXTRA


def cases_for(spec: OpSpec) -> list[Case]:
    """The spec's own cases, then the ones here under ids it does not use."""
    own = list(spec.cases())
    ids = {c.id for c in own}
    return own + [c for c in extra_cases().get(spec.name, []) if c.id not in ids]
