"""One deliberate porting bug per op family, each seen in the field.

Every op delegates to the reference (or, for dense causal attention, to an
independent float64 implementation) and then breaks exactly one thing, so a
failure can only come from the planted bug. ``planted_clean`` is the same
module with every bug switched off: it must pass.
"""
from __future__ import annotations

import math
import os

import torch

from dsport.core.fp8 import FP8_FORMATS, fp8_format, scale_format

from .common import as_spec, causal_attention, reference_op, via_reference

NAME = "planted_bugs"
DESCRIPTION = "test-only: one planted bug per op family"
BUGGY = os.environ.get("DSPORT_PLANTED_CLEAN") != "1"


def act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0"):
    """Bug: ue8m0 scale rounded DOWN to a power of two (the contract rounds up)."""
    f, sf = fp8_format(fmt), scale_format(scale_fmt)
    if not BUGGY or sf.name != "ue8m0":
        return via_reference("act_quant", x=x, block=block, fmt=fmt, scale_fmt=scale_fmt)
    g = x.float().reshape(*x.shape[:-1], x.shape[-1] // block, block)
    s = g.abs().amax(-1).clamp_min(1e-4) / f.max
    s = torch.exp2(torch.floor(torch.log2(s)))
    return f.cast(g / s.unsqueeze(-1)).reshape(x.shape), s


def dequant(y, s, block=128):
    """Bug: e4m3fnuz data read as if labelled e4m3fn (bytes reinterpreted)."""
    if BUGGY and y.dtype == torch.float8_e4m3fnuz:
        y = y.view(torch.float8_e4m3fn)
        out = (y.float().reshape(*y.shape[:-1], -1, block) * s.unsqueeze(-1)).reshape(y.shape)
        return out
    return via_reference("dequant", y=y, s=s, block=block)


def rope(x, positions, freqs, interleaved):
    """Bug: always interleaved pairs: the indexer's rotate-half RoPE comes out wrong."""
    return as_spec("rope", dict(x=x, positions=positions, freqs=freqs, interleaved=interleaved),
                   reference_op("rope")(x=x, positions=positions, freqs=freqs, interleaved=True if BUGGY else interleaved))


def topk_select(logits, k, ks=None, ke=None):
    """Bug: the last selected element of each row is dropped (-1)."""
    idx = via_reference("topk_select", logits=logits, k=k, ks=ks, ke=ke).clone()
    if BUGGY:
        for t in range(idx.shape[0]):
            valid = (idx[t] != -1).nonzero().flatten()
            if valid.numel():
                idx[t, valid[-1]] = -1
    return idx


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
    """Bug: -1 (invalid) indices are not skipped; like Python indexing they hit the last KV row."""
    if BUGGY:
        indices = torch.where(indices == -1, torch.full_like(indices, kv.shape[0] - 1), indices)
    return via_reference("sparse_mla_prefill", q=q, kv=kv, indices=indices, sm_scale=sm_scale, d_v=d_v)


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
    """Bug: lse returned in base 2 (log2 of the softmax denominator) instead of natural log."""
    out, lse = via_reference("sparse_mla_decode", q=q, kv_cache=kv_cache, indices=indices, sm_scale=sm_scale, d_v=d_v, fmt=fmt)
    return out, (lse / math.log(2.0) if BUGGY else lse)


def mla_prefill_dense(q, k, v, sm_scale):
    """Bug: causal mask off by one (each query also sees the next key)."""
    out, lse = causal_attention(q, k, v, sm_scale, shift=1 if BUGGY else 0)
    return as_spec("mla_prefill_dense", dict(q=q, k=k, v=v, sm_scale=sm_scale), (out, lse))


def moe_gate(x, weight, bias=None, n_group=8, topk_group=4, topk=8, route_scale=2.5, score_func="sigmoid"):
    """Bug: routing weights computed from the bias-corrected selection scores."""
    args = dict(x=x, weight=weight, bias=bias, n_group=n_group, topk_group=topk_group, topk=topk,
                route_scale=route_scale, score_func=score_func)
    w, ids = via_reference("moe_gate", **args)
    if BUGGY and bias is not None and score_func == "sigmoid":
        b = (x.double() @ weight.double().T).sigmoid() + bias.double()
        sel = b.gather(1, ids.long())
        w = (sel / sel.sum(-1, keepdim=True) * route_scale).float()
    return w, ids


OPS = {f.__name__: f for f in (act_quant, dequant, rope, topk_select, sparse_mla_prefill, sparse_mla_decode,
                               mla_prefill_dense, moe_gate)}

# which case ids each bug must turn red, with the metric words the reason must contain
EXPECTED = {
    "act_quant": ("e4m3fn-ue8m0", "differ bit-wise"),
    "dequant": ("fnuz", "median got/want 2"),
    "rope": ("tiny-rotate-half", "peak-relative error"),
    "topk_select": ("tiny", "recall"),
    "sparse_mla_prefill": ("rows-all-invalid", "lse: -inf disagrees"),
    "sparse_mla_decode": ("fp8-page64", "lse: max |err|"),
    "mla_prefill_dense": ("tiny", "peak-relative error"),
    "moe_gate": ("tiny", "weights:"),
}


def available():
    return True, "test-only backend"
