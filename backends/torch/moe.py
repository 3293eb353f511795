"""MoE routing and grouped expert compute.

Experts run on token rows sorted by expert (the contiguous layout). When the
busiest expert is not much busier than the mean, the sorted rows are scattered
into the masked layout [experts with tokens, M_max, D] and all experts run as
three batched GEMMs; when routing is skewed, padding would waste compute, so
each expert that has tokens runs one GEMM on its contiguous segment. Empty
experts cost nothing on either path."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import policy
from .quant import fp8_gemm

PAD_WASTE = 1.25
"""Use the padded batched path while M_max * experts_with_tokens <= PAD_WASTE * rows."""

GATHER_ROWS = 32
"""With idle experts, the padded batched path also needs M_max >= GATHER_ROWS rows per expert: copying an
expert's three weights costs about as much as that many rows of its GEMMs (measured at decode, one token,
4 of 16 experts: the copies took a third of the step)."""


def moe_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, n_group: int = 8,
             topk_group: int = 4, topk: int = 8, route_scale: float = 2.5,
             score_func: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    t, e = x.shape[0], weight.shape[0]
    logits = x.float() @ weight.float().t()
    scores = logits.softmax(-1) if score_func == "softmax" else logits.sigmoid()
    sel = scores if bias is None else scores + bias.float()
    if n_group > 1:
        grouped = sel.view(t, n_group, e // n_group)
        # with a bias, a group scores the sum of its top-2; without, its max (DeepSeek Gate)
        gs = grouped.amax(-1) if bias is None else grouped.topk(min(2, e // n_group), dim=-1).values.sum(-1)
        keep = torch.zeros(t, n_group, dtype=torch.bool, device=x.device)
        keep.scatter_(1, gs.topk(topk_group, dim=-1).indices, True)
        sel = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).flatten(1)
    ids = sel.topk(topk, dim=-1).indices
    w = scores.gather(1, ids)
    if score_func == "sigmoid":
        w = w / w.sum(-1, keepdim=True)
    return w * route_scale, ids.to(torch.int32)


def _sort_rows(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat (token, slot) positions sorted by expert, their expert ids); -1 slots dropped."""
    flat = ids.reshape(-1).long()
    keep = (flat >= 0).nonzero().squeeze(1)
    order = keep[torch.argsort(flat[keep], stable=True)]
    return order, flat[order]


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
    t, d = x.shape
    kslots, e = ids.shape[1], w1.shape[0]
    mdt = policy.matmul_dtype(x.device, x.dtype)
    order, eid = _sort_rows(ids)
    if order.numel() == 0:
        return torch.zeros((t, d), dtype=x.dtype, device=x.device)
    counts = torch.bincount(eid, minlength=e)
    active = counts.nonzero().squeeze(1)                                       # experts with tokens only
    n_act, m_max, rows = active.numel(), int(counts.max()), order.numel()
    tok = order // kslots
    gate = weights.reshape(-1)[order].float()
    # the routing weight scales the [rows, inter] activations before w2 (linear), not the wider [rows, dim] output
    # with some experts idle the batched path first copies the busy experts' weights: with few rows per
    # expert (decode) that copy costs more than the GEMMs, and per-expert GEMMs on weight views skip it
    if m_max * n_act <= PAD_WASTE * rows and (n_act == e or m_max >= GATHER_ROWS):
        return _masked_path(x, tok, gate, eid, counts, active, m_max, w1, w3, w2, mdt)
    return _segment_path(x, tok, gate, counts[active].tolist(), active.tolist(), w1, w3, w2, mdt)


def _masked_path(x, tok, gate, eid, counts, active, m_max, w1, w3, w2, mdt) -> torch.Tensor:
    t, d = x.shape
    n_act, dev = active.numel(), x.device
    slot = torch.full((w1.shape[0],), -1, dtype=torch.long, device=dev)
    slot[active] = torch.arange(n_act, device=dev)
    starts = torch.cumsum(counts, 0) - counts
    flat = slot[eid] * m_max + torch.arange(eid.numel(), device=dev) - starts[eid]   # row's place in [n_act, M_max]
    # padding slots read and write a spare row t: one gather in, one index_add out, no zero-fill pass over the pad
    src = torch.full((n_act * m_max,), t, dtype=torch.long, device=dev)
    src[flat] = tok
    g = torch.zeros(n_act * m_max, dtype=torch.float32, device=dev)
    g[flat] = gate
    xe = torch.cat((x.to(mdt), x.new_zeros((1, d), dtype=mdt)))
    a = xe[src].view(n_act, m_max, d)
    # every expert busy (the common prefill case): use the weights as they are instead of gathering a copy
    pick = (lambda w: w) if n_act == w1.shape[0] else (lambda w: w[active])
    w1a, w3a, w2a = pick(w1).to(mdt), pick(w3).to(mdt), pick(w2).to(mdt)
    h = _swiglu(torch.bmm(a, w1a.transpose(1, 2)), torch.bmm(a, w3a.transpose(1, 2)))
    h.mul_(g.view(n_act, m_max, 1))
    out = torch.bmm(h.to(mdt), w2a.transpose(1, 2)).view(n_act * m_max, d)
    y = torch.zeros((t + 1, d), dtype=torch.float32, device=dev)              # top-k sums accumulate in fp32
    y.index_add_(0, src, out.float())
    return y[:t].to(x.dtype)


def _swiglu(h1: torch.Tensor, h3: torch.Tensor) -> torch.Tensor:
    h1 = h1.float()
    return F.silu(h1, inplace=True).mul_(h3.float())                          # fp32 by contract; h1 is a fresh product


def _segment_path(x, tok, gate, sizes, experts, w1, w3, w2, mdt) -> torch.Tensor:
    xs = x[tok].to(mdt)                                                         # contiguous layout: rows by expert
    outs = []
    for seg, gs, ex in zip(torch.split(xs, sizes), torch.split(gate, sizes), experts):  # only experts with tokens
        h = _swiglu(seg @ w1[ex].to(mdt).t(), seg @ w3[ex].to(mdt).t()).mul_(gs[:, None])
        outs.append(h.to(mdt) @ w2[ex].to(mdt).t())
    y = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    y.index_add_(0, tok, torch.cat(outs).float())
    return y.to(x.dtype)


def moe_grouped_gemm_contiguous(a: torch.Tensor, b: torch.Tensor, m_indices: torch.Tensor) -> torch.Tensor:
    """One GEMM per run of equal group ids (segments are sorted), zero for -1 padding runs."""
    mdt = policy.matmul_dtype(a.device, a.dtype)
    c = torch.zeros((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    if a.shape[0] == 0:
        return c
    groups, lengths = torch.unique_consecutive(m_indices, return_counts=True)
    start = 0
    for g, n in zip(groups.tolist(), lengths.tolist()):  # runs of the sorted layout: <= 2 per non-empty group
        if g >= 0:
            c[start:start + n] = (a[start:start + n].to(mdt) @ b[g].to(mdt).t()).to(a.dtype)
        start += n
    return c


def moe_grouped_gemm_masked(a: torch.Tensor, b: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    g, mm, _ = a.shape
    mdt = policy.matmul_dtype(a.device, a.dtype)
    c = torch.zeros((g, mm, b.shape[1]), dtype=a.dtype, device=a.device)
    if g == 0 or mm == 0:
        return c
    top = int(masked_m.max())                                                   # rows past every count are never computed
    if top == 0:
        return c
    full = torch.bmm(a[:, :top].to(mdt), b.to(mdt).transpose(1, 2))
    live = torch.arange(top, device=a.device)[None, :, None] < masked_m[:, None, None]
    c[:, :top] = torch.where(live, full, torch.zeros((), dtype=full.dtype, device=a.device)).to(a.dtype)
    return c


def moe_grouped_fp8_gemm_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                    m_indices: torch.Tensor) -> torch.Tensor:
    """One blocked fp8_gemm per run of equal group ids: each reads only its own
    expert's FP8 weight, widened one N-tile at a time (never a dense copy)."""
    c = torch.zeros((a.shape[0], b.shape[1]), dtype=torch.bfloat16, device=a.device)
    if a.shape[0] == 0:
        return c
    groups, lengths = torch.unique_consecutive(m_indices, return_counts=True)
    start = 0
    for g, n in zip(groups.tolist(), lengths.tolist()):
        if g >= 0:
            c[start:start + n] = fp8_gemm(a[start:start + n], sa[start:start + n], b[g], sb[g])
        start += n
    return c


def moe_grouped_fp8_gemm_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                masked_m: torch.Tensor) -> torch.Tensor:
    """One blocked fp8_gemm per group on its first masked_m[g] rows; empty groups are not read."""
    c = torch.zeros((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.bfloat16, device=a.device)
    for g, m in enumerate(masked_m.tolist()):
        if m:
            c[g, :m] = fp8_gemm(a[g, :m], sa[g, :m], b[g], sb[g])
    return c
