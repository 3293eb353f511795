"""Reference top-k selection (SPEC §5)."""
from __future__ import annotations

import torch


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None,
                ke: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the k largest logits of row t within [ks[t], ke[t]) (the
    whole row when ks/ke are None), padded with -1 when the window holds
    fewer than k positions. Every position in the window is a candidate,
    -inf logits included: validity comes from the window, not the value.

    The result is a set. This reference lists it by value, largest first,
    ties by lower index (a stable sort; NaN ranks above +inf, torch.sort's
    order), but no backend is held to that order or tie choice."""
    t_len, s_len = logits.shape
    out = torch.full((t_len, k), -1, dtype=torch.int32)
    for t in range(t_len):
        lo, hi = (0, s_len) if ks is None else (int(ks[t]), int(ke[t]))
        order = torch.sort(logits[t, lo:hi].double(), descending=True, stable=True).indices[:k]
        out[t, : order.numel()] = (order + lo).int()
    return out
