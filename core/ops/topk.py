"""Top-k selection, the second stage of DSA (SPEC §5)."""
from __future__ import annotations

import torch

from dsport.core.ops.indexer import BOUNDS_RULE
from dsport.core.spec import Check, OpSpec, Output, Param, Tensor, register

topk_select = register(OpSpec(
    name="topk_select", family="dsa",
    summary="Indices of the k largest logits within [ks[t], ke[t]) (whole row when ks/ke are None); "
            "rows with fewer than k valid entries are padded with -1. The result is a set: order unspecified, any tie choice valid.",
    args=(Tensor("logits", ("T", "S"), ("fp32",)), Param("k", (int,), minimum=1),
          Tensor("ks", ("T",), ("int32",), optional=True), Tensor("ke", ("T",), ("int32",), optional=True)),
    outputs=(Output("indices", ("T", "k"), torch.int32),),
    checks=(Check("ke", "ks and ke both given or both None", lambda a, d: (a["ks"] is None) == (a["ke"] is None),
                  lambda a, d: f"ks {'None' if a['ks'] is None else 'given'}, ke {'None' if a['ke'] is None else 'given'}"),
            Check("ke", "0 <= ks[t] <= ke[t] <= S", lambda a, d: a["ks"] is None or BOUNDS_RULE.ok(a, d),
                  lambda a, d: BOUNDS_RULE.got(a, d))),
    metric="topk", source="DeepSeek-V3.2-Exp inference/model.py (Indexer.forward topk); FlashMLA sparse indices contract",
    flops=lambda d: float(d["T"] * d["S"]),
))
