"""The op table of the tilelang backend: spec arguments in, spec outputs out.

Each op checks what its kernel supports (CAPABILITIES, declared once in
:mod:`.capabilities`) and raises a ValidationError naming the limit instead
of computing something else; serving such a call from another backend is the
resolver's explicit fallback, never a silent one here.
"""
from __future__ import annotations

import math

import torch

from .capabilities import CAPABILITIES
from .runner import TL_NAME, empty, run
from ...core.capabilities import query_of
from ...core.errors import ValidationError
from ...core.fp8 import FP8_DTYPES, Fp8Format, ScaleFormat, fp8_format, scale_format
from ...core.spec import get_spec


def _require(op: str, **bound: object) -> None:
    spec = get_spec(op)
    reasons = CAPABILITIES[op].reasons(query_of(spec, bound, spec.validate(bound)))
    if reasons:
        raise ValidationError(op, "(capability)", f"what the tilelang kernel supports ({CAPABILITIES[op].note})", "; ".join(reasons))


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    _require("act_quant", x=x, block=block, fmt=fmt, scale_fmt=scale_fmt)
    f, sf = fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant")
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    y, s = empty((rows.shape[0], n), f.dtype), empty((rows.shape[0], n // block), torch.float32)
    if rows.shape[0]:
        run("act_quant", rows, y, s, dtype=TL_NAME[x.dtype], fmt=f.name, scale_fmt=sf.name, group=block)
    return y.reshape(x.shape), s.reshape(*x.shape[:-1], n // block)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    _require("rms_norm", x=x, w=w, eps=eps, residual=residual)
    if w.dtype not in TL_NAME:
        raise ValidationError("rms_norm", "w", "dtype bfloat16 or float32 (tilelang kernel)", str(w.dtype))
    d = x.shape[-1]
    rows = x.reshape(-1, d)
    y = empty(rows.shape, x.dtype)
    cfg = dict(D=d, dtype=TL_NAME[x.dtype], w_dtype=TL_NAME[w.dtype], residual=residual is not None, eps=float(eps))
    if residual is None:
        if rows.shape[0]:
            run("rms_norm", rows, w, y, **cfg)
        return y.reshape(x.shape)
    if residual.dtype != x.dtype:  # rounding it to x's dtype first would change the sum silently
        raise ValidationError("rms_norm", "residual", f"dtype {x.dtype} (as 'x', tilelang kernel)", str(residual.dtype))
    r_out = empty(rows.shape, x.dtype)
    if rows.shape[0]:
        run("rms_norm", rows, w, residual.reshape(-1, d), y, r_out, **cfg)
    return y.reshape(x.shape), r_out.reshape(x.shape)


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    _require("fp8_gemm", a=a, sa=sa, b=b, sb=sb)
    m, k = a.shape
    n = b.shape[0]
    c = empty((m, n), torch.bfloat16)
    if m and n:
        run("fp8_gemm", a, sa.float(), b, sb.float(), c, fmt=FP8_DTYPES[a.dtype].name)
    return c


HEAD_PAD = 8


def indexer_logits(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                   k_scale: torch.Tensor | None = None) -> torch.Tensor:
    _require("indexer_logits", q=q, k=k, weights=weights, ks=ks, ke=ke, k_scale=k_scale)
    t, h, d = q.shape
    s = k.shape[0]
    out = empty((t, s), torch.float32)
    if h % HEAD_PAD:
        # wgmma's N is a multiple of 8: extra heads get zero q and zero weight, so they add exactly 0
        hp = -(-h // HEAD_PAD) * HEAD_PAD
        q = torch.cat([q, torch.zeros(t, hp - h, d, dtype=q.dtype)], 1) if q.dtype not in FP8_DTYPES else \
            torch.cat([q.view(torch.uint8), torch.zeros(t, hp - h, d, dtype=torch.uint8)], 1).view(q.dtype)
        weights = torch.cat([weights.float(), torch.zeros(t, hp - h)], 1)
        h = hp
    if t and s:
        dtype = FP8_DTYPES[q.dtype].name if q.dtype in FP8_DTYPES else "bfloat16"
        args = (q, k, weights.float(), ks, ke) + ((k_scale.float(),) if k_scale is not None else ())
        run("indexer_logits", *args, out, H=h, D=d, dtype=dtype)
    elif t:
        out.fill_(-math.inf)
    return out


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None, ke: torch.Tensor | None = None) -> torch.Tensor:
    _require("topk_select", logits=logits, k=k, ks=ks, ke=ke)
    t, s = logits.shape
    if ks is None:
        ks, ke = torch.zeros(t, dtype=torch.int32), torch.full((t,), s, dtype=torch.int32)
    out = empty((t, k), torch.int32)
    if t:
        run("topk_select", logits, ks, ke, out, K=k)
    return out


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _require("sparse_mla_prefill", q=q, kv=kv, indices=indices, sm_scale=sm_scale, d_v=d_v)
    t, h, dqk = q.shape
    k = indices.shape[-1]
    out, lse, maxl = empty((t, h, d_v), q.dtype), empty((t, h), torch.float32), empty((t, h), torch.float32)
    if t:
        if kv.shape[0] == 0:  # nothing to attend: every index is invalid
            return out.zero_(), lse.fill_(-math.inf), maxl.fill_(-math.inf)
        run("sparse_mla_prefill", q, kv, indices, out, lse, maxl, H=h, DQK=dqk, DV=d_v, K=k, sm_scale=float(sm_scale))
    return out, lse, maxl


OPS = {
    "act_quant": act_quant,
    "rms_norm": rms_norm,
    "fp8_gemm": fp8_gemm,
    "indexer_logits": indexer_logits,
    "topk_select": topk_select,
    "sparse_mla_prefill": sparse_mla_prefill,
}
