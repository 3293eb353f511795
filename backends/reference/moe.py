"""Reference mixture of experts (SPEC §7): the gate, the expert MLPs and the
two grouped-GEMM layouts, in float64; plus the helpers that build those
layouts from routing ids.

Where real kernels round, this reference does not. DeepSeek's Gate scores in
float32; its Expert casts silu(w1 x) * (w3 x) back to the activation dtype
(bf16) before w2 and returns bf16 expert outputs that the MoE layer weights
and sums in float32. Tolerances for backends account for those roundings;
near-tied gate scores may route differently in float32 than here, which is
why routing is compared tie-aware.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ...core.errors import ValidationError
from .quant import fp8_gemm


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries per row. A stable descending sort makes
    ties go to the lower index: one valid choice among the tied ones, fixed so
    the reference is deterministic (the contract accepts any tied choice)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def moe_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, n_group: int = 8,
             topk_group: int = 4, topk: int = 8, route_scale: float = 2.5,
             score_func: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    """Route each token to ``topk`` experts.

    scores s = sigmoid(x W^T) (or softmax over the E experts); selection runs on
    b = s + bias. With ``n_group > 1`` only the ``topk_group`` best groups stay
    eligible, a group's score being the sum of its two largest b (its largest
    b when ``bias`` is None, as DeepSeek's Gate does). Weights come from the
    UNBIASED s: for sigmoid, s[ids] / sum s[ids] * route_scale; for softmax,
    s[ids] * route_scale without renormalisation (DeepSeek renormalises only
    the sigmoid scores).

    Returns (weights float64 [T, topk], ids int32 [T, topk]). The ids are a set:
    here they come in descending selection score, ties to the lower expert id,
    but neither the order nor the choice among tied experts is contractual.
    """
    t, e = x.shape[0], weight.shape[0]
    logits = x.double() @ weight.double().T
    scores = logits.softmax(dim=-1) if score_func == "softmax" else logits.sigmoid()
    biased = scores if bias is None else scores + bias.double()
    if n_group > 1:
        grouped = biased.view(t, n_group, e // n_group)
        group_score = grouped.amax(dim=-1) if bias is None else grouped.topk(2, dim=-1).values.sum(dim=-1)
        dropped = torch.ones(t, n_group, dtype=torch.bool, device=x.device)
        dropped.scatter_(1, _top(group_score, topk_group), False)
        biased = biased.masked_fill(dropped.repeat_interleave(e // n_group, dim=1), float("-inf"))
    ids = _top(biased, topk)
    weights = scores.gather(1, ids)
    if score_func == "sigmoid":
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * route_scale, ids.to(torch.int32)


def _swiglu_expert(x: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """E(x) = w2(silu(w1 x) * (w3 x)) in float64."""
    return (F.silu(x @ w1.double().T) * (x @ w3.double().T)) @ w2.double().T


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor,
                w3: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """y[t] = sum_j weights[t, j] * E_{ids[t, j]}(x[t]); ids of -1 (an expert on
    another rank under expert parallelism) contribute nothing, and their
    weights are never read. Shared experts are the layer's business, not this
    op's. Returns float64 [T, D]."""
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64, device=x.device)
    flat = ids.reshape(-1).long()
    slots = torch.nonzero(flat >= 0).squeeze(1)
    slots = slots[torch.sort(flat[slots], stable=True).indices]  # grouped by expert: one pass per expert
    experts, counts = torch.unique_consecutive(flat[slots], return_counts=True)
    xd, wd = x.double(), weights.reshape(-1).double()
    for e, s in zip(experts.tolist(), torch.split(slots, counts.tolist())):
        tok = s // ids.shape[1]
        y.index_add_(0, tok, _swiglu_expert(xd[tok], w1[e], w3[e], w2[e]) * wd[s].unsqueeze(1))
    return y


def moe_grouped_gemm_contiguous(a: torch.Tensor, b: torch.Tensor, m_indices: torch.Tensor) -> torch.Tensor:
    """c[m] = a[m] . b[m_indices[m]]^T, float64 [M, N]. Rows with
    m_indices = -1 (segment padding) are 0 by dsport's contract; DeepGEMM's
    m_grouped contiguous GEMM leaves them unwritten, so a backend wrapping it
    must zero them."""
    c = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    for g in torch.unique(m_indices[m_indices >= 0]).tolist():
        rows = torch.nonzero(m_indices == g).squeeze(1)
        c[rows] = a[rows].double() @ b[g].double().T
    return c


def moe_grouped_gemm_masked(a: torch.Tensor, b: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    """c[g, m] = a[g, m] . b[g]^T for m < masked_m[g], float64 [G, M_max, N].
    Rows at or beyond masked_m[g] are 0 by dsport's contract; DeepGEMM's masked
    GEMM leaves them undefined, so a backend wrapping it must zero them."""
    c = torch.zeros(a.shape[0], a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for g, m in enumerate(masked_m.tolist()):
        c[g, :m] = a[g, :m].double() @ b[g].double().T
    return c


def moe_grouped_fp8_gemm_contiguous(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                    m_indices: torch.Tensor) -> torch.Tensor:
    """c[m] = fp8_gemm(a[m], sa[m], b[g], sb[g]), g = m_indices[m], float64 [M, N];
    -1 padding rows are 0 and only the groups some row names are read."""
    c = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64, device=a.device)
    for g in torch.unique(m_indices[m_indices >= 0]).tolist():
        rows = torch.nonzero(m_indices == g).squeeze(1)
        c[rows] = fp8_gemm(a[rows], sa[rows], b[g], sb[g])
    return c


def moe_grouped_fp8_gemm_masked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor,
                                masked_m: torch.Tensor) -> torch.Tensor:
    """c[g, m] = fp8_gemm(a[g, m], sa[g, m], b[g], sb[g]) for m < masked_m[g], float64
    [G, M_max, N]; the other rows are 0 and a group with masked_m = 0 is not read."""
    c = torch.zeros(a.shape[0], a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for g, m in enumerate(masked_m.tolist()):
        if m:
            c[g, :m] = fp8_gemm(a[g, :m], sa[g, :m], b[g], sb[g])
    return c


# -- layouts: routing ids -> grouped-GEMM rows ------------------------------------------------

class ContiguousLayout(NamedTuple):
    """Rows of the contiguous grouped GEMM. ``slots[m]`` is the flat routing
    slot t * K + j (token t = slot // K, its j-th expert) that row m carries,
    -1 for a padding row; ``m_indices[m]`` is that row's expert, -1 for
    padding (int32, DeepGEMM's m_indices)."""

    slots: torch.Tensor
    m_indices: torch.Tensor


class MaskedLayout(NamedTuple):
    """Slots of the masked grouped GEMM. ``slots[g, m]`` is the flat routing
    slot t * K + j placed at row m of expert g, -1 beyond ``masked_m[g]``
    (int32 [G], the row count of each expert)."""

    slots: torch.Tensor
    masked_m: torch.Tensor


def _sorted_by_expert(op: str, ids: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat slots sorted by expert, stable; their experts; per-expert counts),
    -1 ids dropped."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        got = f"{ids.dtype}, shape {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValidationError(op, "ids", "an int32/int64 tensor [T, K]", got)
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= n_experts):
        raise ValidationError(op, "ids", f"-1 or an expert id in [0, {n_experts})",
                              f"values in [{int(ids.min())}, {int(ids.max())}]")
    flat = ids.reshape(-1).long()
    # -1 sorts after every expert, so the valid slots form a prefix
    order = torch.sort(torch.where(flat >= 0, flat, n_experts), stable=True).indices
    counts = torch.bincount(flat[flat >= 0], minlength=n_experts)
    order = order[: int(counts.sum())]
    return order, flat[order], counts


def _rank_within_expert(experts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Position of each sorted slot inside its expert's run."""
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(experts.numel(), device=experts.device) - first[experts]


def contiguous_layout(ids: torch.Tensor, n_experts: int, align: int = 128) -> ContiguousLayout:
    """Lay routing ids [T, K] out for ``moe_grouped_gemm_contiguous``: rows
    sorted by expert (stable, so in token order within an expert), each
    expert's segment padded to a multiple of ``align`` with -1 rows; an expert
    with no tokens gets no rows; ids of -1 get no row. Use it as
    a = x[slots // K] (zeros where slots < 0), then scatter row m of the
    result, times weights.flatten()[slots[m]], into token slots[m] // K."""
    if not isinstance(align, int) or align < 1:
        raise ValidationError("contiguous_layout", "align", "an int >= 1", repr(align))
    order, experts, counts = _sorted_by_expert("contiguous_layout", ids, n_experts)
    padded = (counts + align - 1) // align * align
    row = (torch.cumsum(padded, 0) - padded)[experts] + _rank_within_expert(experts, counts)
    m = int(padded.sum())
    slots = torch.full((m,), -1, dtype=torch.int64, device=ids.device)
    m_indices = torch.full((m,), -1, dtype=torch.int32, device=ids.device)
    slots[row] = order
    m_indices[row] = experts.to(torch.int32)
    return ContiguousLayout(slots, m_indices)


def masked_layout(ids: torch.Tensor, n_experts: int, m_max: int) -> MaskedLayout:
    """Lay routing ids [T, K] out for ``moe_grouped_gemm_masked``: expert g's
    slots fill rows 0..masked_m[g]-1 of group g in token order; ids of -1 get
    no slot. Raises if an expert receives more than ``m_max`` rows (the
    masked layout has no room for them; nothing is dropped silently)."""
    order, experts, counts = _sorted_by_expert("masked_layout", ids, n_experts)
    if not isinstance(m_max, int) or m_max < 0:
        raise ValidationError("masked_layout", "m_max", "an int >= 0", repr(m_max))
    if counts.numel() and int(counts.max()) > m_max:
        raise ValidationError("masked_layout", "m_max", "at least the largest expert's row count",
                              f"m_max={m_max}, expert {int(counts.argmax())} has {int(counts.max())} rows")
    slots = torch.full((n_experts, m_max), -1, dtype=torch.int64, device=ids.device)
    slots[experts, _rank_within_expert(experts, counts)] = order
    return MaskedLayout(slots, counts.to(torch.int32))
