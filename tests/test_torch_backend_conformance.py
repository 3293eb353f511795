"""Every op of the torch backend against the float64 reference on every spec
case: the "quick" cases run by default, the rest of the "full" set is marked
slow.

How outputs are judged (by the op's metric in its spec):
* exact  - bit-identical bytes (FP8, int and cache outputs; dequantized
  floats too: an fp8 value times a power-of-two or fp32 scale rounds once).
* topk   - a set: per row the same number of valid picks, all inside the
  row's window, and the same multiset of selected logit values (ties at the
  boundary may pick different indices; SPEC §5).
* routing - the same expert set per token, weights matched by expert id;
  where ties allow another set, equal selection-score and weight multisets.
* close / attention - same finite pattern (-inf lse exactly where the
  reference has it, NaN where it has NaN) and max |err| relative to the
  reference's peak |value| within the output dtype's bound below.

Bounds by output dtype: the torch backend accumulates in fp32, so what is
left is the final cast. bf16 keeps 8 significant bits: a correctly rounded
output is within 2^-9 relative of the exact value, 2^-7 of the peak leaves
room for fp32 reordering and the bf16 rounding of intermediate values the
contract itself stores in bf16 (e.g. the residual). fp16 keeps 11 bits:
2^-9. fp32 outputs: 1e-5 of the peak; the largest reduction here is a few
thousand terms (2^-24 * sqrt-growth stays far below; observed <= 1e-6).
"""
from __future__ import annotations

import pytest
import torch

import dsport
from dsport.core.spec import specs

REF = dsport.resolve("reference")
TORCH = dsport.resolve("torch")
BOUND = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -9, torch.float32: 1e-5, torch.float64: 1e-12}


def _cases(tag: str, exclude: str | None = None):
    out = []
    for name, spec in specs().items():
        for case in spec.cases():
            if tag in case.tags and (exclude is None or exclude not in case.tags):
                out.append(pytest.param(spec, case, id=f"{name}/{case.id}"))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _exact(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    if got.is_floating_point() and got.element_size() > 1:
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(got), nan), f"{what}: NaN pattern differs"
        assert torch.equal(got[~nan], want[~nan]), f"{what}: values differ"
    else:
        assert torch.equal(_bits(got), _bits(want)), f"{what}: bytes differ"


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    g, w = got.double(), want.double()
    fin = torch.isfinite(w)
    assert torch.equal(torch.isfinite(g), fin), f"{what}: finite pattern differs"
    assert torch.equal(torch.isnan(g), torch.isnan(w)), f"{what}: NaN pattern differs"
    assert torch.equal(g[torch.isinf(w)], w[torch.isinf(w)]), f"{what}: infinities differ"
    if fin.any():
        peak = w[fin].abs().max().clamp_min(1e-30)
        err = ((g[fin] - w[fin]).abs().max() / peak).item()
        assert err <= BOUND[got.dtype], f"{what}: peak-relative error {err:.3g} > {BOUND[got.dtype]:.3g}"


def _topk(got: torch.Tensor, want: torch.Tensor, args: dict) -> None:
    logits = args["logits"]
    t, s = logits.shape
    ks = args.get("ks") if args.get("ks") is not None else torch.zeros(t, dtype=torch.int32)
    ke = args.get("ke") if args.get("ke") is not None else torch.full((t,), s, dtype=torch.int32)
    for r in range(t):
        mine, theirs = got[r][got[r] >= 0].long(), want[r][want[r] >= 0].long()
        assert mine.numel() == theirs.numel(), f"row {r}: {mine.numel()} picks vs {theirs.numel()}"
        assert mine.unique().numel() == mine.numel(), f"row {r}: repeated index"
        assert bool(((mine >= ks[r]) & (mine < ke[r])).all()), f"row {r}: pick outside [ks, ke)"
        a, b = logits[r, mine].double().sort().values, logits[r, theirs].double().sort().values
        assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"row {r}: selected logit values differ"


def _routing(got: tuple, want: tuple, args: dict) -> None:
    """Same experts (weights aligned by id); where ties make another choice
    valid, the chosen selection scores must match as a multiset and so must
    the weights (tied experts have tied scores)."""
    (wg, ig), (ww, iw) = got, want
    og, ow = ig.long().sort(-1), iw.long().sort(-1)
    if torch.equal(og.values, ow.values):
        _close(wg.gather(1, og.indices), ww.gather(1, ow.indices), "weights")
        return
    logits = args["x"].double() @ args["weight"].double().t()
    s = logits.softmax(-1) if args.get("score_func") == "softmax" else logits.sigmoid()
    b = s if args.get("bias") is None else s + args["bias"].double()
    assert torch.equal(b.gather(1, ig.long()).sort(-1).values, b.gather(1, iw.long()).sort(-1).values), "expert sets differ beyond ties"
    _close(wg.sort(-1).values, ww.sort(-1).values, "weights")


def _check(spec, case) -> None:
    args = case.inputs()
    want = getattr(REF, spec.name)(**args)
    got = getattr(TORCH, spec.name)(**args)
    want = want if isinstance(want, tuple) else (want,)
    got = got if isinstance(got, tuple) else (got,)
    bound = spec.bind(**args)
    outs = spec.outputs_for(bound)
    assert len(got) == len(outs) == len(want)
    for o, g, w in zip(outs, got, want):
        dt = o.dtype_for(bound)
        assert g.dtype == dt, f"{o.name}: torch backend returned {g.dtype}, the spec says {dt}"
        assert g.shape == w.shape, f"{o.name}: shape {tuple(g.shape)} vs {tuple(w.shape)}"
    if spec.metric == "topk":
        _topk(got[0], want[0], args)
    elif spec.metric == "routing":
        _routing(got, want, args)
    else:
        for o, g, w in zip(outs, got, want):
            if spec.metric == "exact" or not g.is_floating_point() or g.element_size() == 1:
                _exact(g, w.to(g.dtype) if w.dtype == torch.float64 and spec.metric == "exact" else w, o.name)
            else:
                _close(g, w, o.name)


@pytest.mark.parametrize("spec, case", _cases("quick"))
def test_quick_set(spec, case):
    _check(spec, case)


@pytest.mark.slow
@pytest.mark.parametrize("spec, case", _cases("full", exclude="quick"))
def test_full_set_beyond_quick(spec, case):
    _check(spec, case)


def test_every_spec_op_is_served_and_has_cases():
    assert set(TORCH.ops) == set(specs())
    assert all(spec.cases() for spec in specs().values())


def test_checker_catches_planted_bugs(monkeypatch):
    """The comparisons above can fail: a wrong softmax scale, a dropped -1
    padding rule and one flipped cache byte are each caught."""
    from dsport.backends.torch import attention
    sp = specs()
    prefill = next(c for c in sp["sparse_mla_prefill"].cases() if "quick" in c.tags and c.id != "T0")
    orig = attention.sparse_mla_prefill
    monkeypatch.setattr(TORCH, "sparse_mla_prefill",
                        lambda q, kv, indices, sm_scale, d_v=512: orig(q, kv, indices, sm_scale * 1.01, d_v))
    with pytest.raises(AssertionError):
        _check(sp["sparse_mla_prefill"], prefill)
    topk = next(c for c in sp["topk_select"].cases() if c.id == "empty-windows")
    monkeypatch.setattr(TORCH, "topk_select", lambda logits, k, ks=None, ke=None: torch.topk(logits, min(k, logits.shape[1]), -1).indices.int())
    with pytest.raises(AssertionError):
        _check(sp["topk_select"], topk)
    pack = next(c for c in sp["mla_cache_pack"].cases() if c.id == "tiny")
    from dsport.backends.torch import mla_cache

    def flipped(kv, fmt="e4m3fn"):
        c = mla_cache.mla_cache_pack(kv, fmt)
        c[0, 600] ^= 1
        return c
    monkeypatch.setattr(TORCH, "mla_cache_pack", flipped)
    with pytest.raises(AssertionError):
        _check(sp["mla_cache_pack"], pack)
