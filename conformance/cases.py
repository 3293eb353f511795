"""Conformance cases for ops whose spec does not (yet) carry its own.

The op spec's ``cases()`` is THE source of cases; an op whose spec has none
gets the cases here instead (today the MoE family), so every op is checked.
Every case is tagged: ``quick`` (the default run), ``full`` (everything), plus
``tiny``, ``edge`` (SPEC §8) or ``deepseek`` (real V3.2 widths). DeepSeek-
shaped cases that are cheap on a CPU are also quick: the real widths (256
experts in 8 groups, top-8) are where porting bugs hide.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from dsport.core.constants import DEEPSEEK_V32 as V
from dsport.core.spec import Case, OpSpec

Gen = torch.Generator
TINY = frozenset({"quick", "full", "tiny"})
EDGE = frozenset({"quick", "full", "edge"})
DS = frozenset({"quick", "full", "deepseek"})
DS_FULL = frozenset({"full", "deepseek"})


def _randn(g: Gen, *shape: int, dtype: torch.dtype = torch.bfloat16, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


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
        _EXTRA = _moe_cases()
    return _EXTRA


def cases_for(spec: OpSpec) -> list[Case]:
    """The spec's own cases; the ones here only when the spec has none."""
    return list(spec.cases()) or list(extra_cases().get(spec.name, []))
