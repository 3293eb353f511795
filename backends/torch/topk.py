"""Top-k selection over a window [ks, ke) of each row."""
from __future__ import annotations

import torch

from . import policy


def topk_window(logits: torch.Tensor, k: int, ks: torch.Tensor | None, ke: torch.Tensor | None,
                col0: int = 0) -> torch.Tensor:
    """int32 [T, k] top-k column ids (offset by ``col0``) of ``logits`` [T, W]
    whose columns are absolute positions col0 .. col0 + W; -1 pads rows with
    fewer than k entries inside their window."""
    t, w = logits.shape
    out = torch.full((t, k), -1, dtype=torch.int32, device=logits.device)
    kk = min(k, w)
    if t == 0 or kk == 0:
        return out
    if ks is not None:
        pos = torch.arange(col0, col0 + w, device=logits.device)
        inside = (pos[None, :] >= ks[:, None]) & (pos[None, :] < ke[:, None])
        # an in-window -inf must still outrank the masked columns: it becomes the lowest finite float (only
        # positions are returned, so the substitute value never leaks out)
        lowest = torch.finfo(logits.dtype).min
        logits = torch.where(inside, logits.clamp(min=lowest), float("-inf"))
    # every in-window entry now outranks the masked -inf columns; a picked column outside the window means
    # the row had fewer than k entries in its window and becomes -1 padding
    vals, idx = torch.topk(logits, kk, dim=-1, sorted=False)
    _lowest_index_on_ties(logits, vals, idx, kk)
    idx = idx + col0
    if ks is not None:
        idx = torch.where((idx >= ks[:, None]) & (idx < ke[:, None]), idx, -1)
    out[:, :kk] = idx.to(torch.int32)
    return out


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None,
                ke: torch.Tensor | None = None) -> torch.Tensor:
    t, s = logits.shape
    if ks is None or t == 0:
        return topk_window(logits, k, None, None)
    out = torch.empty((t, k), dtype=torch.int32, device=logits.device)
    # Row blocks, each over the union of its rows' windows: for causal rows that skips the masked
    # triangle, and the block's masked copies ([rows, W] fp32 and bool, ~12 bytes a column) stay
    # within the device's working set instead of streaming [T, S] through memory several times.
    step = policy.rows_per_block(12 * s, logits.device)
    for t0 in range(0, t, step):
        bks, bke = ks[t0:t0 + step], ke[t0:t0 + step]
        lo, hi = int(bks.min()), int(bke.max())
        if hi <= lo:
            out[t0:t0 + step] = -1
        else:
            out[t0:t0 + step] = topk_window(logits[t0:t0 + step, lo:hi], k, bks, bke, col0=lo)
    return out


def _lowest_index_on_ties(logits: torch.Tensor, vals: torch.Tensor, idx: torch.Tensor, kk: int) -> None:
    """Where equal logits straddle the k-th place, keep the lowest positions among them (in place).

    Any tied choice is correct, but a choice that depends on the row's length or the block it was
    computed in would make decode (one row) and prefill (a block of rows) pick different keys for the
    same logits; lowest-position-first is the same on every path. Only rows with such ties pay."""
    thr = vals.amin(-1, keepdim=True)                                          # the k-th largest value
    tied = ((logits >= thr).sum(-1) > kk) & torch.isfinite(thr.squeeze(-1))    # one pass finds the rows
    if not bool(tied.any()):
        return
    rows = tied.nonzero().squeeze(1)
    sub, t = logits[rows], thr[rows]
    e, n_gt = sub == t, (sub > t).sum(-1)
    take = (sub > t) | (e & (e.cumsum(-1) <= (kk - n_gt)[:, None]))          # exactly kk per row
    w = logits.shape[-1]
    pos = torch.arange(w, device=logits.device, dtype=torch.float64) / w        # ranks the taken set first, any order
    idx[rows] = torch.topk(take.double() - pos, kk, dim=-1, sorted=False).indices
