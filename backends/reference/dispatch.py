"""Reference expert-parallel dispatch and combine (core/ops/dispatch.py): plain
loops over destination ranks and tokens, float outputs in float64."""
from __future__ import annotations

import torch


def moe_dispatch(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, n_ranks: int,
                 experts_per_rank: int) -> tuple[torch.Tensor, ...]:
    t, k = ids.shape
    send_x = torch.zeros(n_ranks, t, x.shape[1], dtype=torch.float64, device=x.device)
    send_ids = torch.full((n_ranks, t, k), -1, dtype=torch.int32, device=x.device)
    send_w = torch.zeros(n_ranks, t, k, dtype=torch.float64, device=x.device)
    counts = torch.zeros(n_ranks, dtype=torch.int32, device=x.device)
    src = torch.full((n_ranks, t), -1, dtype=torch.int32, device=x.device)
    for r in range(n_ranks):
        lo, hi = r * experts_per_rank, (r + 1) * experts_per_rank
        n = 0
        for i in range(t):
            mine = (ids[i] >= lo) & (ids[i] < hi)
            if not bool(mine.any()):
                continue
            send_x[r, n] = x[i].double()
            send_ids[r, n] = torch.where(mine, ids[i] - lo, -1)
            # where, not a product: the weight of a slot elsewhere is never read (it may be NaN)
            send_w[r, n] = torch.where(mine, weights[i].double(), 0.0)
            src[r, n] = i
            n += 1
        counts[r] = n
    return send_x, send_ids, send_w, counts, src


def moe_combine(y: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    n_ranks, t, d = y.shape
    out = torch.zeros(t, d, dtype=torch.float64, device=y.device)
    for r in range(n_ranks):
        for i in range(t):
            if int(src[r, i]) >= 0:
                out[int(src[r, i])] += y[r, i].double()
    return out
