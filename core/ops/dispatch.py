"""Expert-parallel dispatch and combine: the layout transforms that an
all-to-all kernel (DeepEP's low-latency mode, mori, HCCL's MoE dispatch)
fuses with the exchange between ranks.

The contract is one process's side of the exchange, so it is checkable
without a second process. ``moe_dispatch`` packs, for each destination rank,
the tokens that name at least one of its experts (one row per token and
rank, tokens in ascending order, the rest of the buffer zero), with the
routing ids made local to that rank (-1 where the slot's expert lives
elsewhere) and the weights of those slots (0 elsewhere). A rank receiving
such rows runs its experts on them with the weights applied (``MoE.routed``,
``moe_experts``) and sends the weighted sums back in the same slots;
``moe_combine`` adds the returned rows into the tokens they came from. The
exchange itself (sending ``counts[r]`` rows of block ``r`` to rank ``r``) is
the communicator's (``core/model/parallel.py``), which a backend may replace
with a fused kernel.
"""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32
from .hostile import strided_views
from ..spec import DEEPSEEK, EDGE, POISON, TINY, Case, Check, OpSpec, Output, Param, Tensor, randn, register

SRC = "DeepEP low_latency_dispatch / low_latency_combine (per-rank packed rows, local expert ids, -1 elsewhere)"
DS = DEEPSEEK_V32


def _ids_in_range(a, d) -> bool:  # noqa: ANN001 - bound args, dims
    ids = a["ids"]
    return ids.numel() == 0 or bool(((ids >= -1) & (ids < a["n_ranks"] * a["experts_per_rank"])).all())


def _ids_got(a, d) -> str:  # noqa: ANN001
    return f"values in [{int(a['ids'].min())}, {int(a['ids'].max())}], n_ranks * experts_per_rank = {a['n_ranks'] * a['experts_per_rank']}"


def _src_in_range(a, d) -> bool:  # noqa: ANN001
    src = a["src"]
    return src.numel() == 0 or bool(((src >= -1) & (src < d["T"])).all())


# -- case builders ------------------------------------------------------------------------------


def _dispatch_case(t: int, d: int, k: int, n_ranks: int, per_rank: int, ids=None, nan_at_minus1: bool = False):  # noqa: ANN001
    def make(gen):
        e = n_ranks * per_rank
        got = (ids or _distinct)(gen, t, e, k)
        w = torch.rand(t, k, generator=gen) + 0.1
        if nan_at_minus1:
            w = torch.where(got < 0, torch.full_like(w, float("nan")), w)
        return {"x": randn(gen, t, d), "ids": got, "weights": w, "n_ranks": n_ranks, "experts_per_rank": per_rank}
    return make


def _distinct(gen, t, e, k):  # noqa: ANN001 - k distinct experts per token, as the gate picks them
    rows = [torch.randperm(e, generator=gen)[:k] for _ in range(t)]
    return torch.stack(rows).to(torch.int32) if rows else torch.zeros(0, k, dtype=torch.int32)


def _one_rank(gen, t, e, k):  # noqa: ANN001 - every token's experts on rank 0 (the first quarter)
    return _distinct(gen, t, e // 4, k)


def _with_minus1(gen, t, e, k):  # noqa: ANN001
    ids = _distinct(gen, t, e, k)
    return torch.where(torch.rand(t, k, generator=gen) < 0.4, torch.full_like(ids, -1), ids)


def _dispatch_cases() -> list[Case]:
    return [
        Case("moe_dispatch", "tiny", _dispatch_case(6, 32, 2, 2, 4), tags=TINY),
        Case("moe_dispatch", "T0", _dispatch_case(0, 32, 2, 2, 4), tags=EDGE),
        Case("moe_dispatch", "one-rank", _dispatch_case(12, 32, 3, 4, 4, ids=_one_rank), tags=EDGE,
             note="every token on rank 0: the other blocks are empty (counts 0, rows 0, src -1)"),
        Case("moe_dispatch", "minus1-nan-weights", _dispatch_case(16, 32, 4, 4, 4, ids=_with_minus1, nan_at_minus1=True),
             tags=POISON, note="40% of the slots -1 with NaN weights: never read, 0 in every block"),
        Case("moe_dispatch", "strided-views", strided_views(_dispatch_case(8, 32, 2, 2, 4)), tags=EDGE),
        Case("moe_dispatch", "single-rank", _dispatch_case(8, 32, 4, 1, 16), tags=EDGE, note="one rank holds every expert"),
        Case("moe_dispatch", "ds-ep8", _dispatch_case(64, DS.dim, DS.n_activated_experts, 8, DS.n_routed_experts // 8),
             tags=DEEPSEEK, note="256 experts over 8 ranks, top-8, release width"),
    ]


def _combine_case(t: int, d: int, n_ranks: int, fill: float = 0.6, poison_unused: bool = False):
    def make(gen):
        src = torch.full((n_ranks, t), -1, dtype=torch.int32)
        for r in range(n_ranks):  # a random subset of the tokens per rank, ascending, packed at the front
            picked = torch.nonzero(torch.rand(t, generator=gen) < fill)[:, 0].to(torch.int32)
            src[r, : picked.numel()] = picked
        y = randn(gen, n_ranks, t, d)
        if poison_unused:
            y = torch.where(src.unsqueeze(-1) < 0, torch.full_like(y, float("nan")), y)
        return {"y": y, "src": src}
    return make


def _combine_cases() -> list[Case]:
    return [
        Case("moe_combine", "tiny", _combine_case(6, 32, 2), tags=TINY),
        Case("moe_combine", "T0", _combine_case(0, 32, 2), tags=EDGE),
        Case("moe_combine", "poison-unused-slots", _combine_case(16, 32, 4, poison_unused=True), tags=POISON,
             note="NaN in every slot with src -1: never read"),
        Case("moe_combine", "all-ranks-every-token", _combine_case(8, 32, 4, fill=1.1), tags=EDGE,
             note="every token back from every rank: four rows summed per token"),
        Case("moe_combine", "ds-ep8", _combine_case(64, DS.dim, 8), tags=DEEPSEEK, note="8 ranks, release width"),
    ]


# -- specs --------------------------------------------------------------------------------------

moe_dispatch = register(OpSpec(
    name="moe_dispatch", family="moe",
    summary="Per destination rank r (experts [r * experts_per_rank, (r + 1) * experts_per_rank)): the tokens naming one of "
            "its experts, ascending, packed at the front of block r; their ids made local (-1 for slots elsewhere), "
            "their weights (0 for slots elsewhere), the token each row came from (-1 past counts[r]).",
    args=(Tensor("x", ("T", "D")), Tensor("ids", ("T", "K"), ("int32",)), Tensor("weights", ("T", "K"), ("float",)),
          Param("n_ranks", (int,), minimum=1, doc="ranks of the expert-parallel group"),
          Param("experts_per_rank", (int,), minimum=1, doc="experts each rank holds (E / n_ranks)")),
    outputs=(Output("send_x", ("n_ranks", "T", "D"), lambda a: a["x"].dtype, doc="rows per destination, zero past counts[r]"),
             Output("send_ids", ("n_ranks", "T", "K"), torch.int32, doc="expert ids local to the destination, -1 elsewhere"),
             Output("send_weights", ("n_ranks", "T", "K"), lambda a: a["weights"].dtype, doc="routing weights, 0 where the id is -1"),
             Output("counts", ("n_ranks",), torch.int32, doc="rows for each destination"),
             Output("src", ("n_ranks", "T"), torch.int32, doc="the token of each row, -1 past counts[r]")),
    checks=(Check("ids", "-1 (no expert) or a global expert id in [0, n_ranks * experts_per_rank)", _ids_in_range, _ids_got),),
    metric="exact", source=SRC,
    cases=_dispatch_cases,
    doc="One row per (token, destination rank), not per (token, expert): a token whose two experts share a rank travels "
        "once, as DeepEP sends it. The weights of -1 slots are never read (SPEC §10). The buffers hold T rows per "
        "destination (the most any rank can receive from this one), so shapes are static; the exchange sends only "
        "counts[r] rows of block r.",
))

moe_combine = register(OpSpec(
    name="moe_combine", family="moe",
    summary="out[t] = sum of y[r, i] over the slots with src[r, i] = t (fp32 accumulation); slots with src -1 are not read.",
    args=(Tensor("y", ("R", "T", "D")), Tensor("src", ("R", "T"), ("int32",))),
    outputs=(Output("out", ("T", "D"), lambda a: a["y"].dtype),),
    checks=(Check("src", "-1 or a token index in [0, T)", _src_in_range,
                  lambda a, d: f"values in [{int(a['src'].min())}, {int(a['src'].max())}], T={d['T']}"),),
    metric="close", reduction="R", source=SRC,
    flops=lambda d: float(d["R"] * d["T"] * d["D"]),
    cases=_combine_cases,
    doc="The inverse of moe_dispatch: y holds, in dispatch's slots, what each rank returned (its experts' weighted sum), "
        "so combine only adds. Rows of y with src -1 may hold anything, NaN included (SPEC §10).",
))
