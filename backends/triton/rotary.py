"""RoPE in both pairings (SPEC §3): interleaved (x[2i], x[2i+1]) for MLA,
rotate-half (x[i], x[i + D/2]) for the indexer."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import cast_out


@triton.jit
def rope_kernel(x_ptr, pos_ptr, f_ptr, y_ptr, H, sx_t, sx_h, sx_d,
                HALF: tl.constexpr, INTERLEAVED: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr):
    # One token per program, all its heads at once: the angle row is computed
    # once and broadcast over heads. Input strides are honoured so MLA can
    # rotate the last 64 dims of a 192-dim head in place of a copy.
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BH + tl.arange(0, BH)
    i = tl.arange(0, BP)
    hm = h < H
    im = i < HALF
    m = hm[:, None] & im[None, :]
    ang = tl.load(pos_ptr + t).to(tl.float32) * tl.load(f_ptr + i, mask=im, other=0.0).to(tl.float32)
    c = tl.cos(ang)[None, :]
    s = tl.sin(ang)[None, :]
    if INTERLEAVED:
        d0 = 2 * i
        d1 = 2 * i + 1
    else:
        d0 = i
        d1 = i + HALF
    base = x_ptr + t * sx_t + h[:, None].to(tl.int64) * sx_h
    x0 = tl.load(base + d0[None, :] * sx_d, mask=m, other=0.0).to(tl.float32)
    x1 = tl.load(base + d1[None, :] * sx_d, mask=m, other=0.0).to(tl.float32)
    out = y_ptr + (t * H + h[:, None]) * (2 * HALF)
    dt = y_ptr.dtype.element_ty
    tl.store(out + d0[None, :], cast_out(x0 * c - x1 * s, dt), mask=m)
    tl.store(out + d1[None, :], cast_out(x0 * s + x1 * c, dt), mask=m)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    t, h, d = x.shape
    y = torch.empty(t, h, d, dtype=x.dtype, device=x.device)
    if t and h and d:
        bh = min(triton.next_power_of_2(h), 16)
        rope_kernel[(t, triton.cdiv(h, bh))](x, positions.contiguous(), freqs.contiguous(), y, h, *x.stride(),
                                             HALF=d // 2, INTERLEAVED=bool(interleaved), BH=bh,
                                             BP=triton.next_power_of_2(d // 2))
    return y
