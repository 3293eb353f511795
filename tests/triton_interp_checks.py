"""Interpreter checks of the Triton backend, run as a script in a process
started with TRITON_INTERPRET=1 (tests/test_triton_interpreter.py does that).
Prints one JSON object: check name -> {"ok": bool, "detail": str}.

Expected values come from code that does not share the kernels' code: the
float64 reference of the repo (quant) or brute-force loops written here.
"""
from __future__ import annotations

import json
import math
import os
import sys
import traceback

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

import dsport  # noqa: E402
from dsport.backends.reference import quant as ref_quant  # noqa: E402
from dsport.core.fp8 import FP8_FORMATS  # noqa: E402
from dsport.core.spec import get_spec  # noqa: E402

# the triton kernels, validated; ops without a kernel come from the chain (unused here)
tri = dsport.resolve({"backend": "triton", "fallback": "fallback"})
RESULTS: dict[str, dict] = {}
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def record(name: str, ok: bool, detail: str = "") -> None:
    RESULTS[name] = {"ok": bool(ok), "detail": detail}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| over the finite reference values; inf where the two disagree on which
    values are NaN or infinite (SPEC §10: non-finite values propagate exactly as the reference's)."""
    o, r = out.double(), ref.double()
    fin = torch.isfinite(r)
    if not torch.equal(torch.isnan(o), torch.isnan(r)) or not torch.equal(o[torch.isinf(r)], r[torch.isinf(r)]) \
            or not torch.isfinite(o[fin]).all():
        return float("inf")
    if not fin.any():
        return 0.0
    return float((o[fin] - r[fin]).abs().max() / r[fin].abs().max().clamp_min(1e-30))


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


@check
def act_quant_cases():
    for case in get_spec("act_quant").cases():
        if "deepseek" in case.tags:
            continue
        args = case.inputs()
        y, s = tri.act_quant(**args)
        yr, sr = ref_quant.act_quant(**args)
        # NaN where the reference has NaN agrees whatever its code (SPEC §10: e4m3fn has two NaN bytes)
        differ = (bits(y) != bits(yr)) & ~(y.float().isnan() & yr.float().isnan())
        ok = y.dtype == yr.dtype and not differ.any() and torch.equal(s.isnan(), sr.isnan()) and torch.equal(s.nan_to_num(), sr.nan_to_num())
        record(f"act_quant/{case.id}", ok, f"{int(differ.sum())} fp8 bytes differ" if not ok else "")


@check
def act_quant_every_fp8_value_and_midpoint():
    # Every finite fp8 value, every midpoint between neighbours (ties to even) and
    # the floats just beside each midpoint, quantized with s = 1 (amax = fmax, fp32 scale).
    for name, f in FP8_FORMATS.items():
        vals = torch.arange(256, dtype=torch.uint8).view(f.dtype).float()
        vals = vals[torch.isfinite(vals)].unique().sort().values
        mids = (vals[1:] + vals[:-1]) / 2
        x = torch.cat([vals, mids, mids.nextafter(torch.tensor(1e9)), mids.nextafter(torch.tensor(-1e9)), torch.tensor([-0.0])])
        x = x[x.abs() <= f.max]
        pad = torch.full((-x.numel() % 128,), f.max)
        x = torch.cat([x, pad]).view(-1, 128).clone()
        x[:, 0] = f.max
        y, s = tri.act_quant(x, fmt=name, scale_fmt="fp32")
        want = x.to(f.dtype)  # torch's own RNE cast, independent of both the kernel and the reference
        ok = bool((s == 1).all()) and torch.equal(bits(y), bits(want))
        record(f"act_quant/grid-{name}", ok, f"{int((bits(y) != bits(want)).sum())} differ")


@check
def act_quant_check_can_fail():
    # Planted bug: the kernel given the other element format (fnuz instead of fn)
    # must not pass the bit-exact comparison with the e4m3fn reference. (With
    # ue8m0 scales the bytes can coincide: the fnuz scale is often exactly 2x
    # and fnuz bytes mean half the value, which is why the scale is compared too.)
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(5))
    y, _ = tri.act_quant(x, fmt="e4m3fnuz", scale_fmt="fp32")
    yr, _ = ref_quant.act_quant(x, fmt="e4m3fn", scale_fmt="fp32")
    record("act_quant/detects-wrong-format", not torch.equal(bits(y), bits(yr)))


@check
def fp8_gemm_cases():
    for case in get_spec("fp8_gemm").cases():
        if "deepseek" in case.tags:
            continue
        args = case.inputs()
        c = tri.fp8_gemm(**args)
        r = ref_quant.fp8_gemm(**args)
        e = rel_err(c, r)
        # bf16 output: half an ulp is 2**-8 of the value, so of the peak at most; fp32 sums add ~1e-6.
        ok = c.dtype == torch.bfloat16 and c.shape == r.shape and e <= 2 ** -8 + 1e-5
        record(f"fp8_gemm/{case.id}", ok, f"max err / peak = {e:.3g}")


@check
def fp8_gemm_brute_force():
    # A loop over 128-blocks written here, independent of the reference's einsum.
    g = torch.Generator().manual_seed(7)
    f = FP8_FORMATS["e4m3fnuz"]
    m, n, k = 3, 130, 256
    a = (torch.randn(m, k, generator=g) * 30).clamp(-f.max, f.max).to(f.dtype)
    b = (torch.randn(n, k, generator=g) * 30).clamp(-f.max, f.max).to(f.dtype)
    sa = torch.rand(m, k // 128, generator=g) + 0.5
    sb = torch.rand(2, k // 128, generator=g) + 0.5
    want = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        for j in range(n):
            for kb in range(k // 128):
                blk = slice(kb * 128, (kb + 1) * 128)
                want[i, j] += float((a[i, blk].double() * b[j, blk].double()).sum()) * float(sa[i, kb]) * float(sb[j // 128, kb])
    e = rel_err(tri.fp8_gemm(a, sa, b, sb), want)
    record("fp8_gemm/brute-force-fnuz", e <= 2 ** -8 + 1e-5, f"max err / peak = {e:.3g}")


def _rms_brute(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=torch.float64)
    flat, of = x.reshape(-1, x.shape[-1]).double(), out.view(-1, x.shape[-1])
    for r in range(flat.shape[0]):
        ms = sum(float(v) ** 2 for v in flat[r]) / flat.shape[1]
        of[r] = w.double() * flat[r] / math.sqrt(ms + eps)
    return out


@check
def rms_norm():
    g = torch.Generator().manual_seed(1)
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2 ** -8 + 1e-4)):
        x = torch.randn(2, 3, 100, generator=g).to(dt)
        w = torch.rand(100, generator=g) + 0.5
        r = torch.randn(2, 3, 100, generator=g).to(dt)
        y = tri.rms_norm(x, w, 1e-6)
        e = rel_err(y, _rms_brute(x, w, 1e-6))
        record(f"rms_norm/{str(dt)[6:]}", y.dtype == dt and e <= tol, f"{e:.3g}")
        y, ro = tri.rms_norm(x, w, 1e-6, r)
        s = x.double() + r.double()
        e1, e2 = rel_err(y, _rms_brute(s, w, 1e-6)), rel_err(ro, s)
        record(f"rms_norm/residual-{str(dt)[6:]}", y.dtype == ro.dtype == dt and e1 <= tol and e2 <= tol, f"{e1:.3g} {e2:.3g}")
    y = tri.rms_norm(torch.zeros(0, 64), torch.ones(64))
    record("rms_norm/T0", y.shape == (0, 64))


def _rope_brute(x, pos, freqs, interleaved):
    t_, h_, d = x.shape
    out = torch.empty(x.shape, dtype=torch.float64)
    for t in range(t_):
        for h in range(h_):
            for i in range(d // 2):
                ang = float(pos[t]) * float(freqs[i])
                j0, j1 = (2 * i, 2 * i + 1) if interleaved else (i, i + d // 2)
                a, b = float(x[t, h, j0]), float(x[t, h, j1])
                out[t, h, j0] = a * math.cos(ang) - b * math.sin(ang)
                out[t, h, j1] = a * math.sin(ang) + b * math.cos(ang)
    return out


@check
def rope_both_pairings():
    g = torch.Generator().manual_seed(2)
    pos = torch.tensor([0, 1, 77, 4095])
    freqs = torch.rand(8, generator=g)
    heads = torch.randn(4, 3, 24, generator=g)
    x = heads[..., 8:]  # strided: the last 16 dims of 24-dim heads, as MLA takes its rope dims
    # fp32 angles of |t * f| <= 4096 carry ~2.4e-4 rad of rounding, as in the model's fp32 freqs table
    for inter in (True, False):
        want = _rope_brute(x, pos, freqs, inter)
        y = tri.rope(x, pos, freqs, inter)
        e = (y.double() - want).abs().max().item()
        other = (tri.rope(x, pos, freqs, not inter).double() - want).abs().max().item()
        name = "interleaved" if inter else "rotate-half"
        record(f"rope/{name}", e <= 1e-3, f"max abs err {e:.3g}")
        # the check must be able to fail: the other pairing is far off
        record(f"rope/{name}-detects-mixed-pairing", other > 0.1, f"other pairing err {other:.3g}")


def _compare(op: str, case_id: str, outs, refs, tols) -> None:
    outs = outs if isinstance(outs, tuple) else (outs,)
    refs = refs if isinstance(refs, tuple) else (refs,)
    spec = get_spec(op)
    msgs, ok = [], len(outs) == len(refs)
    for o, r, tol, decl in zip(outs, refs, tols, spec.outputs):
        fin_o, fin_r = torch.isfinite(o.double()), torch.isfinite(r.double())
        same_specials = torch.equal(fin_o, fin_r) and torch.equal(o.double()[~fin_r].nan_to_num(7.0), r.double()[~fin_r].nan_to_num(7.0))
        e = rel_err(o[fin_r], r[fin_r]) if bool(fin_r.any()) else 0.0
        want_dt = decl.dtype if not callable(decl.dtype) else None
        dt_ok = want_dt is None or o.dtype == want_dt
        ok &= same_specials and e <= tol and dt_ok and o.shape == r.shape
        msgs.append(f"{decl.name}: err/peak {e:.3g} (tol {tol:.3g}){'' if same_specials else ', inf/nan pattern differs'}"
                    f"{'' if dt_ok else f', dtype {o.dtype}'}")
    record(f"{op}/{case_id}", ok, "; ".join(msgs))


REF = dsport.resolve("reference")
# bf16 outputs: half an ulp (2**-8) for the output plus one for the bf16 P in P.V.
ATTN_TOL = (2 * 2 ** -8, 1e-5, 1e-5)
SPEC_CASES = {
    "indexer_logits": (("tiny-float", "tiny-fp8", "fp8-fnuz", "fp8-causal-prefix", "empty-windows", "T0", "nan",
                        "heads-8"), (1e-5,)),
    "sparse_mla_prefill": (("tiny", "fp32-inputs", "T0", "rows-all-invalid", "duplicates", "S-lt-k", "heads-8"), ATTN_TOL),
    "sparse_mla_decode": (("tiny-float", "fp8-page1", "fnuz-page64", "B0", "rows-all-invalid", "mtp-sq2"), ATTN_TOL[:2]),
}


@check
def reference_cases():
    # Spec cases checked against the float64 reference (written apart from these kernels).
    for op, (ids, tols) in SPEC_CASES.items():
        cases = {c.id: c for c in get_spec(op).cases()}
        for cid in ids:
            args = cases[cid].inputs()
            _compare(op, cid, tri.ops[op](**args), REF.ops[op](**args), tols)


@check
def sparse_mla_amd_orientation():
    # The AMD tiling (q as the A operand of the QK product, 16 rows per step) is
    # another code path of the same kernel; run it here too by choosing it.
    from dsport.backends.triton import attention

    chosen = attention.q_as_b, attention.tile_k
    attention.q_as_b, attention.tile_k = (lambda fp8_cache, amd: False), (lambda amd: 16)
    try:
        cases = {c.id: c for c in get_spec("sparse_mla_prefill").cases()}
        for cid in ("tiny", "rows-all-invalid"):
            args = cases[cid].inputs()
            _compare("sparse_mla_prefill", f"{cid}-amd-tiling", tri.sparse_mla_prefill(**args),
                     REF.sparse_mla_prefill(**args), ATTN_TOL)
    finally:
        attention.q_as_b, attention.tile_k = chosen


@check
def sparse_mla_fp32_tolerance_can_fail():
    # A planted bug (the rope dims dropped from the logits) must break the check.
    case = {c.id: c for c in get_spec("sparse_mla_prefill").cases()}["tiny"]
    args = case.inputs()
    bad = dict(args, q=torch.cat([args["q"][..., :-64], torch.zeros_like(args["q"][..., -64:])], -1))
    out = tri.sparse_mla_prefill(**bad)[0]
    e = rel_err(out, REF.sparse_mla_prefill(**args)[0])
    record("sparse_mla_prefill/detects-dropped-rope", e > ATTN_TOL[0], f"err/peak with the bug {e:.3g}")


def _grouped_brute(a, b, ids):
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    for i, g in enumerate(ids.tolist()):
        if g >= 0:
            for n in range(b.shape[1]):
                out[i, n] = sum(float(x) * float(y) for x, y in zip(a[i], b[g, n]))
    return out


@check
def moe_grouped_gemm():
    g = torch.Generator().manual_seed(3)
    counts = (5, 0, 130)  # an empty group, and a segment longer than 128
    ids = []
    for gi, c in enumerate(counts):
        ids += [gi] * c + [-1] * (-c % 128)
    m_idx = torch.tensor(ids, dtype=torch.int32)
    a = torch.randn(len(ids), 16, generator=g).bfloat16()
    b = torch.randn(3, 20, 16, generator=g).bfloat16()
    c = tri.moe_grouped_gemm_contiguous(a, b, m_idx)
    want = _grouped_brute(a, b, m_idx)
    e = rel_err(c, want)
    pad_zero = bool((c[m_idx < 0] == 0).all())
    record("moe_grouped_gemm_contiguous/segments", c.dtype == torch.bfloat16 and e <= 2 ** -8 + 1e-5 and pad_zero,
           f"err/peak {e:.3g}, padding rows zero: {pad_zero}")
    bad = m_idx.clone()
    bad[3] = 2
    try:
        tri.moe_grouped_gemm_contiguous(a, b, bad)
        record("moe_grouped_gemm_contiguous/mixed-block-rejected", False, "no error")
    except dsport.ValidationError as err:
        record("moe_grouped_gemm_contiguous/mixed-block-rejected", err.arg == "m_indices", str(err))


@check
def moe_experts():
    g = torch.Generator().manual_seed(4)
    t, d, i, e, k = 6, 16, 24, 4, 2
    x = torch.randn(t, d, generator=g).bfloat16()
    ids = torch.tensor([[0, 1], [1, 2], [2, -1], [0, 2], [1, 0], [2, 1]], dtype=torch.int32)  # expert 3 empty
    w = torch.rand(t, k, generator=g)
    w1, w3 = (torch.randn(e, i, d, generator=g) * 0.3).bfloat16(), (torch.randn(e, i, d, generator=g) * 0.3).bfloat16()
    w2 = (torch.randn(e, d, i, generator=g) * 0.3).bfloat16()
    want = torch.zeros(t, d, dtype=torch.float64)
    for tt in range(t):
        for j in range(k):
            ex = int(ids[tt, j])
            if ex >= 0:
                h1, h3 = w1[ex].double() @ x[tt].double(), w3[ex].double() @ x[tt].double()
                want[tt] += float(w[tt, j]) * (w2[ex].double() @ (h1 * torch.sigmoid(h1) * h3))
    y = tri.moe_experts(x, ids, w, w1, w3, w2)
    err = rel_err(y, want)
    # the hidden activation is rounded to bf16 before the down projection, as the model's Linear does
    record("moe_experts/swiglu", y.dtype == torch.bfloat16 and err <= 3 * 2 ** -8, f"err/peak {err:.3g}")
    y0 = tri.moe_experts(x[:0], ids[:0], w[:0], w1, w3, w2)
    record("moe_experts/T0", y0.shape == (0, d))


@check
def backend_declarations():
    import dsport.backends.triton as tb

    ok, reason = tb.available()
    record("backend/available-says-interpreter", ok and "interpreter" in reason, reason)
    record("backend/fp8-per-target", tb.FP8_FORMAT_BY_TARGET == {"sm_90a": "e4m3fn", "gfx950": "e4m3fn", "gfx942": "e4m3fnuz"},
           str(tb.FP8_FORMAT_BY_TARGET))
    missing = set(dsport.specs()) - set(tb.OPS) - set(tb.NOT_SERVED)
    record("backend/every-op-served-or-declared", not missing and not set(tb.OPS) & set(tb.NOT_SERVED), str(missing))
    caps = tb.CAPABILITIES
    record("backend/capabilities-cover-ops", set(caps) == set(tb.OPS) and all(c.devices == ("cpu",) for c in caps.values()))


def main() -> None:
    only = set(sys.argv[1:])
    for fn in CHECKS:
        if only and fn.__name__ not in only:
            continue
        try:
            fn()
        except Exception:
            record(f"{fn.__name__}/crash", False, traceback.format_exc()[-1500:])
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
