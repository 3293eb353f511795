"""Lightning-indexer logits (SPEC §4, DeepGEMM fp8_mqa_logits contract):
logits[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s]) for
s in [ks[t], ke[t]), -inf elsewhere. Every factor (head weight, 1/sqrt(H),
1/sqrt(D), q's FP8 scale) arrives folded into ``weights``."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import INTERPRETED, mma


@triton.jit
def indexer_logits_kernel(q_ptr, k_ptr, w_ptr, ks_ptr, ke_ptr, kscale_ptr, out_ptr, S, H, D,
                          HAS_SCALE: tl.constexpr, INTERP: tl.constexpr,
                          BH: tl.constexpr, BD: tl.constexpr, BN: tl.constexpr):
    # One query token x BN keys per program: the head-sum is a [BH, BD] x [BD, BN]
    # matrix product (wgmma / mfma), then relu, weight and reduce over heads.
    # Key blocks wholly outside [ks, ke) skip the product: causal prefill does
    # about half the work, and -inf is still written for them.
    t = tl.program_id(0).to(tl.int64)
    n0 = tl.program_id(1) * BN
    cols = n0 + tl.arange(0, BN)
    lo = tl.load(ks_ptr + t)
    hi = tl.load(ke_ptr + t)
    inb = (cols >= lo) & (cols < hi)
    res = tl.full((BN,), float("-inf"), tl.float32)
    if (n0 < hi) & (n0 + BN > lo):
        h = tl.arange(0, BH)
        d = tl.arange(0, BD)
        dm = d < D
        q = tl.load(q_ptr + (t * H + h[:, None]) * D + d[None, :], mask=(h < H)[:, None] & dm[None, :], other=0.0)
        k = tl.load(k_ptr + cols[:, None].to(tl.int64) * D + d[None, :], mask=inb[:, None] & dm[None, :], other=0.0)
        sc = mma(q, tl.trans(k), INTERP)
        w = tl.load(w_ptr + t * H + h, mask=h < H, other=0.0).to(tl.float32)
        acc = tl.sum(tl.maximum(sc, 0.0, propagate_nan=tl.PropagateNan.ALL) * w[:, None], axis=0)  # NaN is reported, not relu'd away
        if HAS_SCALE:
            acc = acc * tl.load(kscale_ptr + cols, mask=inb, other=0.0)
        res = tl.where(inb, acc, res)
    tl.store(out_ptr + t * S + cols, res, mask=cols < S)


WARPS, STAGES = 4, 2


def indexer_logits(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                   k_scale: torch.Tensor | None = None) -> torch.Tensor:
    t, h, d = q.shape
    s = k.shape[0]
    out = torch.empty(t, s, dtype=torch.float32, device=q.device)
    if not (t and s):
        return out
    if q.dtype != k.dtype:  # two float dtypes: one product dtype
        q, k = q.float(), k.float()
    # The interpreter pays per program, not per key: past 8192 keys it takes 1024-key tiles (a 70000-key
    # context is then 69 programs, not 1094); shorter contexts keep the GPU tile so its edges stay covered.
    bn = 1024 if INTERPRETED and s > 8192 else 64
    grid = (t, triton.cdiv(s, bn))
    indexer_logits_kernel[grid](q.contiguous(), k.contiguous(), weights.contiguous(), ks.contiguous(), ke.contiguous(),
                                k_scale.contiguous() if k_scale is not None else weights, out, s, h, d,
                                HAS_SCALE=k_scale is not None, INTERP=INTERPRETED,
                                BH=max(16, triton.next_power_of_2(h)), BD=max(16, triton.next_power_of_2(d)), BN=bn,
                                num_warps=WARPS, num_stages=STAGES)
    return out
