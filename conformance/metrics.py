"""How an output is judged against the reference, one function per metric
family named in an op spec's ``metric`` field (SPEC §9):

* ``exact``     bit-exact, bytes compared (fp8 included; the reference is the
                quant-mimicking one).
* ``close``     cosine similarity, peak-relative max error, and agreement of
                non-finite values (NaN where the reference has NaN, the same
                infinities), bounds from :mod:`dsport.conformance.tolerances`.
* ``topk``      tie-aware: the multiset of selected logit values must equal
                the reference's, -1 padding must agree in count, indices must
                be unique and inside [ks, ke); recall is reported.
* ``attention`` close on ``out``; ``lse``/``max_logits`` are -inf (and NaN)
                exactly where the reference is, and elsewhere within an
                absolute bound derived from the split-KV combine.
* ``routing``   the same expert set per token (ties in the selection score
                accepted), then weights close where the sets agree.

Every judge returns a :class:`Judgement` whose ``reason`` names the output and
the metric that failed, so a red cell says why.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .tolerances import Tolerance, log_scale_tolerance, logit_size, row_for, tolerance
from ..core.capabilities import query_of
from ..core.spec import OpSpec, Output, cdiv

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
log = logging.getLogger(__name__)


@dataclass
class Judgement:
    ok: bool
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)


def _r(x: float) -> float:
    """Round for reports: metrics are read by people, 6 significant digits do."""
    if isinstance(x, float) and math.isfinite(x):
        return float(f"{x:.6g}")
    return x if not isinstance(x, float) else repr(x)  # inf/nan as strings keep JSON strict


# -- close ------------------------------------------------------------------------
def close(out: torch.Tensor, ref: torch.Tensor, tol: Tolerance) -> Judgement:
    a, r = out.detach().double().cpu(), ref.detach().double().cpu()
    m: dict[str, Any] = {"n": r.numel()}
    if r.numel() == 0:
        return Judgement(True, "", m, tol.to_json())
    fa, fr = torch.isfinite(a), torch.isfinite(r)
    same_nonfinite = (a == r) | (torch.isnan(a) & torch.isnan(r))
    bad = (fa != fr) | (~fr & ~same_nonfinite)
    m["nonfinite_mismatch"] = int(bad.sum())
    both = fa & fr
    d = (a[both] - r[both]).abs()
    peak = float(r[both].abs().max()) if both.any() else 0.0
    max_abs = float(d.max()) if d.numel() else 0.0
    peak_rel = max_abs / peak if peak > 0 else max_abs
    na, nr = float(a[both].norm()), float(r[both].norm())
    cos = 1.0 if na == nr == 0.0 else (float((a[both] * r[both]).sum()) / (na * nr) if na and nr else 0.0)
    m.update(cos=_r(cos), peak_rel_err=_r(peak_rel), max_abs_err=_r(max_abs), ref_peak=_r(peak))
    why = []
    if m["nonfinite_mismatch"]:
        i = int(bad.flatten().nonzero()[0])
        why.append(f"{m['nonfinite_mismatch']} non-finite mismatches (first at flat {i}: got {a.flatten()[i].item()}, want {r.flatten()[i].item()})")
    if cos < tol.cos_min:
        why.append(f"cos {cos:.10g} < {tol.cos_min:.10g}")
    if peak_rel > tol.peak_rel:
        i = int((a - r).abs().nan_to_num(0.0).flatten().argmax())
        why.append(f"peak-relative error {peak_rel:.3g} > {tol.peak_rel:.3g} (worst at flat {i}: got {a.flatten()[i].item():.6g}, want {r.flatten()[i].item():.6g})")
    return Judgement(not why, "; ".join(why), m, tol.to_json())


# -- exact ------------------------------------------------------------------------
def _bytes(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu().contiguous()
    return t.reshape(-1).view(torch.uint8).reshape(t.numel(), t.element_size()) if t.numel() else t.reshape(0, 1).to(torch.uint8)


def exact(out: torch.Tensor, ref: torch.Tensor) -> Judgement:
    m: dict[str, Any] = {"n": ref.numel()}
    if out.dtype != ref.dtype:
        return Judgement(False, f"dtype {out.dtype} vs reference {ref.dtype}: bit-exact comparison impossible", m)
    diff = (_bytes(out) != _bytes(ref)).any(-1)
    if out.is_floating_point() and diff.any():
        # NaN where the reference has NaN is agreement, whatever its sign and payload bits (SPEC §10)
        diff &= ~(torch.isnan(out.detach().cpu().float()) & torch.isnan(ref.detach().cpu().float())).reshape(-1)
    m["mismatches"] = int(diff.sum())
    if not m["mismatches"]:
        return Judgement(True, "", m, {"exact": True})
    idx = diff.nonzero().flatten()
    i = int(idx[0])
    got, want = out.detach().cpu().reshape(-1)[i], ref.detach().cpu().reshape(-1)[i]
    gb, wb = _bytes(out)[i].tolist(), _bytes(ref)[i].tolist()
    m["first_mismatch"] = {"flat_index": i, "got": _r(float(got.double())), "want": _r(float(want.double())),
                           "got_bytes": bytes(gb).hex(), "want_bytes": bytes(wb).hex()}
    if out.is_floating_point():
        g = out.detach().cpu().reshape(-1)[idx].double()
        w = ref.detach().cpu().reshape(-1)[idx].double()
        nz = (w != 0) & torch.isfinite(g) & torch.isfinite(w)
        if nz.any():  # a constant ratio (2x, 0.5x) points at a scale or format mix-up
            m["median_ratio_at_mismatches"] = _r(float((g[nz] / w[nz]).median()))
    reason = (f"{m['mismatches']} of {ref.numel()} values differ bit-wise (first at flat {i}: got {m['first_mismatch']['got']} "
              f"[0x{m['first_mismatch']['got_bytes']}], want {m['first_mismatch']['want']} [0x{m['first_mismatch']['want_bytes']}])")
    if "median_ratio_at_mismatches" in m:
        reason += f", median got/want {m['median_ratio_at_mismatches']}"
    return Judgement(False, reason, m, {"exact": True})


# -- topk -------------------------------------------------------------------------
def topk(out: torch.Tensor, ref: torch.Tensor, logits: torch.Tensor, ks: torch.Tensor | None, ke: torch.Tensor | None) -> Judgement:
    o, r, lg = out.detach().cpu().long(), ref.detach().cpu().long(), logits.detach().cpu().double()
    T, S = lg.shape
    m: dict[str, Any] = {"rows": T}
    bad_rows: list[tuple[int, str]] = []
    hits = total = 0
    for t in range(T):
        lo = int(ks[t]) if ks is not None else 0
        hi = int(ke[t]) if ke is not None else S
        ov, rv = o[t][o[t] != -1], r[t][r[t] != -1]
        total += rv.numel()
        hits += len(set(ov.tolist()) & set(rv.tolist()))
        if ov.numel() != rv.numel():
            bad_rows.append((t, f"{ov.numel()} valid indices, reference {rv.numel()} (-1 padding count differs)"))
        elif bool(((o[t] < -1) | (o[t] >= S)).any()) or bool(((ov < lo) | (ov >= hi)).any()):
            bad_rows.append((t, f"an index outside [{lo}, {hi})"))
        elif len(set(ov.tolist())) != ov.numel():
            bad_rows.append((t, "duplicate indices"))
        elif not torch.equal(lg[t, ov].sort().values, lg[t, rv].sort().values):
            bad_rows.append((t, "selected logit values differ from the reference's top-k (not a tie)"))
    m["recall"] = _r(hits / total) if total else 1.0
    m["rows_wrong"] = len(bad_rows)
    if bad_rows:
        t, why = bad_rows[0]
        return Judgement(False, f"{len(bad_rows)} of {T} rows wrong, recall {m['recall']} (first: row {t}: {why})", m, {"tie_aware": True})
    return Judgement(True, "", m, {"tie_aware": True})


# -- attention lse ------------------------------------------------------------------
def log_scale(out: torch.Tensor, ref: torch.Tensor, out_dtype: torch.dtype, n: Sequence[int], name: str) -> Judgement:
    """lse / max_logits: -inf, +inf and NaN exactly where the reference has them (NaN only from a
    NaN input, SPEC §10), and elsewhere an ABSOLUTE error bound (see
    :func:`dsport.conformance.tolerances.log_scale_tolerance`)."""
    a, r = out.detach().double().cpu(), ref.detach().double().cpu()
    m: dict[str, Any] = {"n": r.numel()}
    fin_r = torch.isfinite(r)
    peak = float(r[fin_r].abs().max()) if fin_r.any() else 0.0
    tol = log_scale_tolerance(out_dtype, n, peak)
    if not r.numel():
        return Judgement(True, "", m, tol.to_json())
    ninf_r, ninf_a = r == -math.inf, a == -math.inf
    m["neg_inf_mismatch"] = int((ninf_r != ninf_a).sum())
    nan_r, nan_a = torch.isnan(r), torch.isnan(a)
    m["nan_mismatch"] = int((nan_r != nan_a).sum())
    m["pos_inf_mismatch"] = int(((r == math.inf) != (a == math.inf)).sum())
    fin = fin_r & torch.isfinite(a)
    err = (a - r).abs().where(fin, torch.zeros_like(a))
    m["max_abs_err"] = _r(float(err.max()))
    why = []
    if m["neg_inf_mismatch"]:
        i = int((ninf_r != ninf_a).flatten().nonzero()[0])
        why.append(f"{name}: -inf disagrees at {m['neg_inf_mismatch']} places (first flat {i}: got {a.flatten()[i].item()}, want {r.flatten()[i].item()})")
    if m["nan_mismatch"]:
        i = int((nan_r != nan_a).flatten().nonzero()[0])
        why.append(f"{name}: NaN disagrees at {m['nan_mismatch']} places (first flat {i}: got {a.flatten()[i].item()}, "
                   f"want {r.flatten()[i].item()}; a row with no valid key must give -inf, a NaN input NaN)")
    if m["pos_inf_mismatch"]:
        why.append(f"{name}: +inf disagrees at {m['pos_inf_mismatch']} places")
    if float(err.max()) > tol.abs_err:
        i = int(err.flatten().argmax())
        why.append(f"{name}: max |err| {float(err.max()):.3g} > {tol.abs_err:.3g} absolute at flat {i} "
                   f"(got {a.flatten()[i].item():.6g}, want {r.flatten()[i].item():.6g})")
    return Judgement(not why, "; ".join(why), m, tol.to_json())


# -- routing ----------------------------------------------------------------------
def selection_scores(args: Mapping[str, Any]) -> torch.Tensor:
    """moe_gate's selection score s + bias in float64, for tie detection only."""
    logits = args["x"].double() @ args["weight"].double().T
    s = logits.softmax(-1) if args.get("score_func", "sigmoid") == "softmax" else logits.sigmoid()
    return s + args["bias"].double() if args.get("bias") is not None else s


def routing(outs: Sequence[torch.Tensor], refs: Sequence[torch.Tensor], args: Mapping[str, Any], tol: Tolerance) -> Judgement:
    (w, ids), (rw, rids) = outs, refs
    ids, rids = ids.detach().cpu().long(), rids.detach().cpu().long()
    T = rids.shape[0]
    m: dict[str, Any] = {"tokens": T}
    if T == 0:
        return Judgement(True, "", m, tol.to_json())
    b = selection_scores(args)
    same = [set(ids[t].tolist()) == set(rids[t].tolist()) for t in range(T)]
    ties = 0
    wrong = []
    for t in range(T):
        if same[t]:
            continue
        if ids[t].min() < 0 or ids[t].max() >= b.shape[1] or len(set(ids[t].tolist())) != ids.shape[1]:
            wrong.append(t)
            continue
        got, want = b[t, ids[t]].sort().values, b[t, rids[t]].sort().values
        if torch.allclose(got, want, rtol=0.0, atol=tol.peak_rel * float(want.abs().max())):
            ties += 1
        else:
            wrong.append(t)
    m["routing_agreement"] = _r(sum(same) / T)
    m["tie_choices"] = ties
    m["tokens_misrouted"] = len(wrong)
    why = []
    if wrong:
        t = wrong[0]
        why.append(f"{len(wrong)} of {T} tokens routed to other experts (first: token {t}: got {sorted(ids[t].tolist())}, "
                   f"want {sorted(rids[t].tolist())})")
    rows = torch.tensor(same)
    if rows.any():
        # align weights by expert id: the order of the k experts is not part of the contract
        o1, o2 = ids[rows].argsort(-1), rids[rows].argsort(-1)
        wj = close(w.detach().cpu()[rows].gather(-1, o1), rw.detach().cpu()[rows].gather(-1, o2), tol)
        m.update({f"weights_{k}": v for k, v in wj.metrics.items()})
        if not wj.ok:
            why.append("weights: " + wj.reason)
    return Judgement(not why, "; ".join(why), m, tol.to_json())


# -- dispatch -----------------------------------------------------------------------
def reduction_lengths(exprs: Sequence[str | None], dims: Mapping[str, Any]) -> list[int]:
    """Lengths of the summed dims, from the expressions of the spec or the tolerance row."""
    out = []
    for e in exprs:
        if e:
            try:
                out.append(int(eval(e, {"cdiv": cdiv, "__builtins__": {}}, dict(dims))))  # noqa: S307 - from specs
            except Exception:
                log.warning("reduction %r cannot be evaluated with dims %s", e, dict(dims))
    return out or [1]


def max_angle(bound: Mapping[str, Any]) -> float:
    """Largest RoPE angle |t * f| of a call (rope's positions x freqs)."""
    pos, f = bound.get("positions"), bound.get("freqs")
    if not isinstance(pos, torch.Tensor) or not isinstance(f, torch.Tensor) or not pos.numel() or not f.numel():
        return 0.0
    return float(pos.double().abs().max() * f.double().abs().max())


def row_condition(bound: Mapping[str, Any]) -> float:
    """max over rows of |mean(x)| / std(x): how much an fp32 x - mean loses (layer_norm)."""
    x = bound.get("x")
    if not isinstance(x, torch.Tensor) or not x.numel():
        return 0.0
    h = x.detach().double().reshape(-1, x.shape[-1])
    c = h.mean(-1).abs() / (h.var(-1, unbiased=False) + float(bound.get("eps") or 0.0)).sqrt()
    c = c[torch.isfinite(c)]
    return float(c.max()) if c.numel() else 0.0


def judge(spec: OpSpec, bound: Mapping[str, Any], dims: Mapping[str, Any], outs: Sequence[Any], refs: Sequence[Any],
          check_dtypes: bool = True) -> Judgement:
    """Compare one case's outputs with the reference's under the op's metric family."""
    declared = spec.outputs_for(bound)
    shapes = spec.output_shapes(bound, dims)
    if len(outs) != len(declared):
        return Judgement(False, f"{len(outs)} outputs returned, spec declares {len(declared)} ({', '.join(o.name for o in declared)})")
    for o, x, shape in zip(declared, outs, shapes):
        if not isinstance(x, torch.Tensor):
            return Judgement(False, f"output '{o.name}' is {type(x).__name__}, not a tensor")
        if tuple(x.shape) != tuple(shape):
            return Judgement(False, f"output '{o.name}' has shape {tuple(x.shape)}, spec says {tuple(shape)}")
        want = o.dtype_for(bound)
        if check_dtypes and x.dtype != want:
            return Judgement(False, f"output '{o.name}' has dtype {str(x.dtype).removeprefix('torch.')}, spec says {str(want).removeprefix('torch.')}")
    q = query_of(spec, bound, dims)
    dtype_name = str(q.get("dtype", "-")).removeprefix("torch.")
    row = row_for(spec.name, dtype_name, q.get("fp8_format") or "-")
    n = reduction_lengths(row.reduction or (spec.reduction,), dims)
    angle = max_angle(bound) if row.angle_ulps else 0.0
    cond = row_condition(bound) if row.cond_ulps else 0.0
    lse_ref = next((r for o, r in zip(declared, refs) if o.name == "lse"), None)
    logits = logit_size(lse_ref, n[-1]) if row.exp_ulps and isinstance(lse_ref, torch.Tensor) else 0.0

    def tol_for(o: Output) -> Tolerance:
        return tolerance(spec.name, q.get("dtype"), o.dtype_for(bound), q.get("fp8_format"), n, angle, cond, logits)

    if spec.metric == "routing":
        return routing(outs, refs, bound, tol_for(declared[0]))
    if spec.metric == "topk":
        return topk(outs[0], refs[0], bound["logits"], bound.get("ks"), bound.get("ke"))
    parts: list[tuple[str, Judgement]] = []
    for o, x, r in zip(declared, outs, refs):
        if spec.metric == "exact" or (not r.is_floating_point()) or r.dtype in FP8:
            # a float64 reference of an exact op is compared in the output dtype it must round to
            lowered = r.dtype == torch.float64 and x.is_floating_point() and x.dtype not in FP8 and x.dtype != r.dtype
            j = exact(x, r.to(x.dtype) if lowered else r)
        elif spec.metric == "attention" and o.name in ("lse", "max_logits"):
            j = log_scale(x, r, declared[0].dtype_for(bound), n, o.name)
        else:
            j = close(x, r, tol_for(o))
        parts.append((o.name, j))
    metrics = {name: j.metrics for name, j in parts} if len(parts) > 1 else parts[0][1].metrics
    tols = {name: j.tolerance for name, j in parts} if len(parts) > 1 else parts[0][1].tolerance
    reasons = [f"{name}: {j.reason}" if len(parts) > 1 and not j.reason.startswith(name) else j.reason for name, j in parts if not j.ok]
    return Judgement(not reasons, "; ".join(reasons), metrics, tols)
