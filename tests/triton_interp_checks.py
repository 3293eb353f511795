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

tri = dsport.resolve("triton")
RESULTS: dict[str, dict] = {}
CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def record(name: str, ok: bool, detail: str = "") -> None:
    RESULTS[name] = {"ok": bool(ok), "detail": detail}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if ref.numel() == 0:
        return 0.0
    return float((out.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


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
        ok = y.dtype == yr.dtype and torch.equal(bits(y), bits(yr)) and torch.equal(s, sr)
        record(f"act_quant/{case.id}", ok, f"{int((bits(y) != bits(yr)).sum())} fp8 bytes differ" if not ok else "")


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
