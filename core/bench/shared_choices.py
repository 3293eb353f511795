"""Comparing dsport's model with transformers' across the model's discrete choices.

DeepSeek-V3.2 makes two top-k choices per token and layer: the indexer's keys
and the router's experts. Two float32 implementations choose differently where
two candidates' scores tie to within rounding, and at long prompts such near
ties occur; one swapped key or expert changes that token's hidden state, which
later tokens' indexers see, and the difference spreads. Comparing logits of
free-running models therefore mixes two questions, which this module separates:

* with shared choices (``forced``), transformers' indexers and routers return
  dsport's choices; every position's logits must then agree;
* the choices themselves: in that run transformers' own choices are kept and
  compared with dsport's (:func:`tie_check`): where they differ, each
  differing candidate's score, recomputed in float64 from transformers'
  modules (rotary angles included: transformers rounds them to float32, dsport
  computes them in float64), must lie within ``TIE_GAP`` of the k-th largest,
  relative to the row's peak; and such rows must be rare.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..model import Model

TIE_GAP = 1e-3
"""A differing choice is a rounding tie when every differing candidate's float64 score lies within this fraction
of the row's peak |score| from the k-th largest. The scores are recomputed from the inputs transformers' layer
saw, and those differ from dsport's by float32 rounding of everything before it, the largest part being
transformers' rotary angles, rounded to float32 (off by up to position x 6e-8 rad). Observed on the
vs_transformers checkpoint: 1.7e-5 of the peak at 2048 tokens, 7.9e-5 at 4096; a key projection off by 1%
moves keys by 1.6e-2. The bound suits prompts to ~8K tokens (the benchmark's range)."""
MAX_DIFFERING_ROWS = 0.01
"""At most this fraction of (layer, position) rows may choose differently: near ties are rare, a wrong score
changes a large share of rows."""


@dataclass
class Choices:
    """dsport's choices per layer: indexer key positions [S, topk] (-1 padded) and routed experts [S, k]."""
    keys: list[torch.Tensor] = field(default_factory=list)
    experts: dict[int, torch.Tensor] = field(default_factory=dict)


def dsport_choices(model: Model, prompt: torch.Tensor) -> tuple[torch.Tensor, Choices]:
    """dsport's prompt logits (batch 1) and the choices it made."""
    got = Choices()
    hooks = [layer.self_attn.indexer.register_forward_hook(lambda m, a, out: got.keys.append(out.clone()))
             for layer in model.model.layers]
    moes = [(i, layer.mlp) for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "routed")]
    for i, moe in moes:
        def routed(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, i: int = i, orig: Callable = moe.routed):
            got.experts[i] = ids.clone()
            return orig(x, ids, weights)
        moe.routed = routed
    try:
        model.reset(1, prompt.shape[1])
        logits = model(prompt)
    finally:
        for h in hooks:
            h.remove()
        for _, moe in moes:
            del moe.routed                                       # the class's method again
    return logits, got


@dataclass
class Seen:
    """transformers' own choices in the forced run, with what :func:`tie_check` needs to recompute their scores."""
    keys: list[dict[str, Any]] = field(default_factory=list)
    experts: dict[int, dict[str, Any]] = field(default_factory=dict)


@contextmanager
def forced(hf: Any, ours: Choices) -> Iterator[Seen]:
    """transformers' indexers and routers return dsport's choices while inside; yields what they chose themselves."""
    seen = Seen()

    def indexer(layer: int) -> Callable[..., torch.Tensor]:
        def replace(module: Any, args: tuple, kwargs: dict, own: torch.Tensor) -> torch.Tensor:
            seen.keys.append({"module": module, "own": own[0].long(), "hidden": args[0][0], "q_resid": args[1][0]})
            keys = ours.keys[layer].long()
            rows = torch.arange(keys.shape[0])[:, None].expand_as(keys)
            # -1 pads rows with fewer than topk visible keys; the row's own position (already chosen) fills them
            return torch.where(keys >= 0, keys, rows).to(own.dtype).view_as(own)
        return replace

    def router(layer: int) -> Callable[..., tuple]:
        def replace(module: Any, args: tuple, own: tuple) -> tuple:
            logits, _, own_ids = own
            seen.experts[layer] = {"module": module, "own": own_ids.long(), "hidden": args[0].reshape(logits.shape[0], -1)}
            ids = ours.experts[layer].long()
            # transformers' router weights for the given experts: sigmoid scores, normalized, scaled
            w = logits.sigmoid().gather(1, ids)
            if module.norm_topk_prob:
                w = w / (w.sum(-1, keepdim=True) + 1e-20)
            return logits, w * module.routed_scaling_factor, ids
        return replace

    hooks = [layer.self_attn.indexer.register_forward_hook(indexer(i), with_kwargs=True)
             for i, layer in enumerate(hf.model.layers)]
    hooks += [layer.mlp.gate.register_forward_hook(router(i)) for i, layer in enumerate(hf.model.layers)
              if i in ours.experts]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def _rotary64(hf: Any, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' rotary cos/sin for ``positions``, with the angles in float64."""
    rot = hf.model.rotary_emb
    ang = positions.double()[:, None] * rot.inv_freq.double()[None, :]
    emb = torch.cat((ang, ang), -1)[None]
    return emb.cos() * rot.attention_scaling, emb.sin() * rot.attention_scaling


def _key_scores64(hf: Any, rec: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
    """transformers' indexer score of every key for the query ``rows``, in float64 (later keys -inf)."""
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import apply_rotary_pos_emb

    ix, hs, qr = rec["module"], rec["hidden"].double(), rec["q_resid"].double()
    h, d, r = ix.n_heads, ix.head_dim, ix.qk_rope_head_dim
    cos, sin = _rotary64(hf, torch.arange(hs.shape[0]))

    def rotate(x: torch.Tensor, at: torch.Tensor) -> torch.Tensor:  # x [1, n, heads, d]: the first r dims, half split
        return torch.cat([apply_rotary_pos_emb(x[..., :r], x[..., :r], cos[:, at], sin[:, at], unsqueeze_dim=2)[0],
                          x[..., r:]], -1)
    q = rotate((qr[rows] @ ix.wq_b.weight.double().T).view(1, -1, h, d), rows)[0]
    k = torch.nn.functional.layer_norm(hs @ ix.wk.weight.double().T, (d,), ix.k_norm.weight.double(),
                                       ix.k_norm.bias.double(), ix.k_norm.eps)
    k = rotate(k.view(1, -1, 1, d), torch.arange(hs.shape[0]))[0, :, 0]
    w = (hs[rows] @ ix.weights_proj.weight.double().T) * h ** -0.5
    s = torch.einsum("nh,nhs->ns", w, torch.relu(torch.einsum("nhd,sd->nhs", q, k) * d ** -0.5))
    return s.masked_fill(torch.arange(s.shape[1])[None, :] > rows[:, None], float("-inf"))


def _gap(scores: torch.Tensor, k: int, differing: torch.Tensor) -> torch.Tensor:
    """Per row: the largest |score - k-th largest| / row peak over its ``differing`` candidates."""
    kth = scores.topk(k, dim=1).values[:, -1:]
    peak = scores.masked_fill(torch.isinf(scores), 0).abs().amax(1, keepdim=True)
    return ((scores - kth).abs() / peak).masked_fill(~differing, 0).amax(1)


def _as_sets(ids: torch.Tensor, width: int) -> torch.Tensor:
    """[n, k] ids (entries outside [0, width) ignored) -> bool membership [n, width]."""
    keep = (ids >= 0) & (ids < width)
    return torch.zeros(ids.shape[0], width + 1, dtype=torch.bool).scatter_(1, torch.where(keep, ids, width), True)[:, :width]


def _router_gap(rec: dict[str, Any], rows: torch.Tensor, ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """Per differing row, how far from a tie its expert choice is: a row ties when its float64 group scores
    tie at the topk_group boundary (then any expert of the two groups may come in), or when, within the groups
    float64 selects, every differing expert's score lies at the top_k boundary."""
    m = rec["module"]
    choice = torch.sigmoid(rec["hidden"][rows].double() @ m.weight.double().T) + m.e_score_correction_bias.double()
    e, g = choice.shape[1], m.num_group
    groups = choice.view(-1, g, e // g).topk(2, dim=-1).values.sum(-1)                     # [n, G]
    top = groups.topk(m.topk_group + 1, dim=1).values
    group_margin = (top[:, -2] - top[:, -1]) / groups.abs().amax(1)
    allowed = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(m.topk_group, dim=1).indices, True)
    masked = choice.masked_fill(~allowed.repeat_interleave(e // g, 1), float("-inf"))
    expert_gap = _gap(masked, m.top_k, _as_sets(ours, e) ^ _as_sets(theirs, e)).nan_to_num(nan=float("inf"))
    return torch.minimum(group_margin, expert_gap)


def _key_rows(hf: Any, seen: Seen, ours: Choices, topk: int) -> Iterator[tuple[int, int, float]]:
    """Per layer: (rows compared, rows whose chosen keys differ, their largest tie gap)."""
    for rec, mine in zip(seen.keys, ours.keys):
        n = mine.shape[0]
        visible = torch.arange(n)[:, None]
        # transformers ranks every key and lets the causal mask drop the later ones: compare the visible ones
        diff = _as_sets(torch.where(rec["own"] <= visible, rec["own"], -1), n) ^ _as_sets(mine.long(), n)
        bad = diff.any(1).nonzero().flatten()
        yield n, bad.numel(), _gap(_key_scores64(hf, rec, bad), topk, diff[bad]).max().item() if bad.numel() else 0.0


def _expert_rows(seen: Seen, ours: Choices) -> Iterator[tuple[int, int, float]]:
    """Per MoE layer: (rows compared, rows whose chosen experts differ, their largest tie gap)."""
    for layer, rec in seen.experts.items():
        mine, theirs = ours.experts[layer].long(), rec["own"]
        e = rec["module"].num_experts
        bad = (_as_sets(mine, e) ^ _as_sets(theirs, e)).any(1).nonzero().flatten()
        yield mine.shape[0], bad.numel(), _router_gap(rec, bad, mine[bad], theirs[bad]).max().item() if bad.numel() else 0.0


def tie_check(hf: Any, seen: Seen, ours: Choices, topk: int) -> dict[str, dict[str, Any]]:
    """Per kind of choice (``keys``, ``experts``): rows compared, rows differing, the largest tie gap, and
    ``ties_only`` (every difference a rounding tie, in at most MAX_DIFFERING_ROWS of the rows)."""
    out = {}
    for kind, layers in (("keys", _key_rows(hf, seen, ours, topk)), ("experts", _expert_rows(seen, ours))):
        stats = list(layers)
        rows, differing = sum(s[0] for s in stats), sum(s[1] for s in stats)
        gap = max((s[2] for s in stats), default=0.0)
        frac = differing / max(rows, 1)
        out[kind] = {"rows": rows, "differing_rows": differing, "differing_fraction": frac, "max_gap": gap,
                     "ties_only": gap <= TIE_GAP and frac <= MAX_DIFFERING_ROWS}
    return out
