"""Expert-parallel dispatch and combine as tensor ops (core/ops/dispatch.py):
a [ranks, tokens] membership mask, its running count for the packed slot of
each row, one scatter per output; combine is one index_add in fp32."""
from __future__ import annotations

import torch


def moe_dispatch(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, n_ranks: int,
                 experts_per_rank: int) -> tuple[torch.Tensor, ...]:
    t, k = ids.shape
    dev = x.device
    ranks = torch.arange(n_ranks, device=dev)
    dest = torch.where(ids >= 0, torch.div(ids, experts_per_rank, rounding_mode="floor"), -1).long()
    mine = dest.unsqueeze(0) == ranks.view(-1, 1, 1)                       # [R, T, K]
    hit = mine.any(-1)                                                      # [R, T]
    slot = torch.cumsum(hit, 1) - 1
    r_idx, t_idx = torch.nonzero(hit, as_tuple=True)
    s_idx = slot[r_idx, t_idx]
    send_x = x.new_zeros(n_ranks, t, x.shape[1])
    send_x[r_idx, s_idx] = x[t_idx]
    local = torch.where(mine, ids.unsqueeze(0) - (ranks * experts_per_rank).view(-1, 1, 1).to(ids.dtype), -1)
    send_ids = torch.full((n_ranks, t, k), -1, dtype=torch.int32, device=dev)
    send_ids[r_idx, s_idx] = local[r_idx, t_idx].to(torch.int32)
    w = torch.where(mine, weights.unsqueeze(0), torch.zeros((), dtype=weights.dtype, device=dev))  # never reads -1 slots' weights
    send_w = weights.new_zeros(n_ranks, t, k)
    send_w[r_idx, s_idx] = w[r_idx, t_idx]
    src = torch.full((n_ranks, t), -1, dtype=torch.int32, device=dev)
    src[r_idx, s_idx] = t_idx.to(torch.int32)
    return send_x, send_ids, send_w, hit.sum(1).to(torch.int32), src


def moe_combine(y: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    n_ranks, t, d = y.shape
    flat = src.reshape(-1).long()
    used = flat >= 0
    out = torch.zeros(t, d, dtype=torch.float32, device=y.device)
    out.index_add_(0, flat[used], y.reshape(-1, d)[used].float())
    return out.to(y.dtype)
