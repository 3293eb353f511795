"""Top-k selection, the second stage of DSA (SPEC §5)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from .hostile import poison, strided_views
from .indexer import BOUNDS_RULE, LONG, windows
from ..spec import DEEPSEEK, EDGE, POISON, TINY, Case, Check, OpSpec, Output, Param, Tensor, randn, register


def _topk_case(t: int, s: int, k: int, window: str | None = None, prefix: int = 0, levels: int | None = None):
    """Random fp32 logits; ``levels`` draws them from that many integers so
    ties straddle the k-th place; ``window`` as in the indexer cases, or None
    for whole rows (ks/ke omitted)."""
    def make(gen):
        n = prefix + t if window == "causal" else s
        if levels is None:
            logits = torch.randn(t, n, generator=gen)
        else:
            logits = torch.randint(0, levels, (t, n), generator=gen).float()
        args = {"logits": logits, "k": k}
        if window is not None:
            args["ks"], args["ke"] = windows(gen, t, n, window, prefix)
        return args
    return make


def _topk_cases() -> list[Case]:
    c, k = "topk_select", V32.index_topk

    def infinities(gen):
        args = _topk_case(3, 12, 4)(gen)
        args["logits"][0, :10] = float("-inf")  # only 2 finite, but all 12 positions are in the window
        args["logits"][1, 3] = float("inf")
        args["logits"][2, 5:] = float("-inf")
        return args

    def masked_indexer_rows(gen):
        """Indexer-like rows: -inf outside a causal window, passed with that window."""
        args = _topk_case(6, 0, 4, window="causal", prefix=2)(gen)
        pos = torch.arange(args["logits"].shape[1])
        args["logits"] = torch.where(pos[None, :] < args["ke"][:, None], args["logits"], float("-inf"))
        return args

    def poison_outside(window, t=6, s=64, k=8, prefix=0):
        def make(gen):
            args = _topk_case(t, s, k, window=window, prefix=prefix)(gen)
            pos = torch.arange(args["logits"].shape[1])
            inside = (pos[None, :] >= args["ks"][:, None]) & (pos[None, :] < args["ke"][:, None])
            args["logits"] = poison(args["logits"], ~inside)
            return args
        return make

    def long_rows(gen):
        args = _topk_case(2, LONG, k, window="full")(gen)
        args["ks"][1], args["ke"][1] = 40_000, LONG - 1  # the window of row 1 starts past 32767
        return args

    def all_equal(gen):
        return {"logits": torch.full((3, 40), 0.5), "k": 8, "ks": torch.tensor([0, 5, 30], dtype=torch.int32),
                "ke": torch.tensor([40, 20, 34], dtype=torch.int32)}

    def duplicates(gen):
        base = torch.randn(4, 8, generator=gen)
        return {"logits": base.repeat_interleave(6, dim=1), "k": 10}  # every value six times

    return [
        Case(c, "poison-outside-windows", poison_outside("random"), tags=POISON, fill_uninitialized=True,
             note="NaN outside every row's window: never read"),
        Case(c, "poison-outside-causal", poison_outside("causal", t=8, s=0, k=4, prefix=6), tags=POISON, fill_uninitialized=True),
        Case(c, "long-rows", long_rows, tags=EDGE, note="S = 70000, k = 2048; row 1's window starts at 40000"),
        Case(c, "long-rows-whole", _topk_case(2, LONG, 64), tags=EDGE, note="whole rows of 70000 (ks/ke None)"),
        Case(c, "all-equal", all_equal, tags=EDGE, note="every logit equal: any k distinct in-window indices"),
        Case(c, "duplicate-values", duplicates, tags=EDGE, note="each value six times: ties straddle the boundary"),
        Case(c, "strided-views", strided_views(_topk_case(5, 64, 8, window="random")), tags=EDGE),
        Case(c, "tiny", _topk_case(2, 16, 4), tags=TINY),
        Case(c, "tiny-windows", _topk_case(4, 16, 4, window="random"), tags=TINY),
        Case(c, "dense-S-lt-k", _topk_case(3, 10, 16), tags=EDGE, note="fewer than k positions: all of them, then -1"),
        Case(c, "ties-at-boundary", _topk_case(4, 64, 10, levels=5), tags=EDGE),
        Case(c, "ties-in-windows", _topk_case(5, 64, 8, window="random", levels=3), tags=EDGE),
        Case(c, "empty-windows", _topk_case(6, 40, 8, window="empty"), tags=EDGE),
        Case(c, "causal-prefix", _topk_case(8, 0, 8, window="causal", prefix=3)),
        Case(c, "masked-indexer-rows", masked_indexer_rows, tags=EDGE),
        Case(c, "infinities", infinities, tags=EDGE),
        Case(c, "k1", _topk_case(3, 20, 1), tags=EDGE),
        Case(c, "T0", _topk_case(0, 32, 4), tags=EDGE),
        Case(c, "T1", _topk_case(1, 32, 4, window="full"), tags=EDGE),
        Case(c, "non-contiguous", lambda g: {"logits": torch.randn(50, 6, generator=g).t(), "k": 7}, tags=EDGE),
        Case(c, "ds-whole-rows", _topk_case(4, 5000, k), tags=DEEPSEEK, note="index_topk 2048 of 5000 keys"),
        Case(c, "ds-causal-around-k", _topk_case(16, 0, k, window="causal", prefix=k - 8), tags=DEEPSEEK,
             note="rows cross from dense (ke <= 2048) to sparse selection"),
        Case(c, "ds-ties", _topk_case(2, 4096, k, levels=7), tags=DEEPSEEK),
    ]

topk_select = register(OpSpec(
    name="topk_select", family="dsa",
    summary="Indices of the k largest logits within [ks[t], ke[t]) (whole row when ks/ke are None); "
            "rows with fewer than k valid entries are padded with -1. The result is a set: order unspecified, any tie choice valid.",
    args=(Tensor("logits", ("T", "S"), ("fp32", torch.float64),
                 doc="fp32 from kernels; float64 admitted so the float64 reference indexer chains into it"),
          Param("k", (int,), minimum=1),
          Tensor("ks", ("T",), ("int32",), optional=True), Tensor("ke", ("T",), ("int32",), optional=True)),
    outputs=(Output("indices", ("T", "k"), torch.int32),),
    checks=(Check("ke", "ks and ke both given or both None", lambda a, d: (a["ks"] is None) == (a["ke"] is None),
                  lambda a, d: f"ks {'None' if a['ks'] is None else 'given'}, ke {'None' if a['ke'] is None else 'given'}"),
            Check("ke", "0 <= ks[t] <= ke[t] <= S", lambda a, d: a["ks"] is None or BOUNDS_RULE.ok(a, d),
                  lambda a, d: BOUNDS_RULE.got(a, d))),
    metric="topk", source="DeepSeek-V3.2-Exp inference/model.py (Indexer.forward topk); FlashMLA sparse indices contract",
    flops=lambda d: float(d["T"] * d["S"]),
    cases=_topk_cases,
))
