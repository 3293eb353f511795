"""rms_norm, optionally fused with the residual add (SPEC §3)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .numerics import cast_out


@triton.jit
def rms_norm_kernel(x_ptr, w_ptr, r_ptr, y_ptr, ro_ptr, D, eps,
                    HAS_RES: tl.constexpr, BD: tl.constexpr):
    # One row per program: D = 7168 fits one register tile, so the sum of
    # squares is a single reduction with no second pass over memory.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BD)
    m = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(r_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
        tl.store(ro_ptr + row * D + cols, cast_out(x, ro_ptr.dtype.element_ty), mask=m)
    ms = tl.sum(x * x, axis=0) / D
    w = tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    y = w * (x * tl.math.rsqrt(ms + eps))
    tl.store(y_ptr + row * D + cols, cast_out(y, y_ptr.dtype.element_ty), mask=m)


def warps_for(d: int) -> int:
    return 8 if d > 4096 else 4  # the 7168-wide hidden row: 8 warps keep 28 values per thread


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1]
    x2 = x.reshape(-1, d).contiguous()
    y = torch.empty_like(x2)
    r2 = residual.reshape(-1, d).contiguous() if residual is not None else x2
    ro = torch.empty_like(x2) if residual is not None else y
    if x2.shape[0] and d:
        rms_norm_kernel[(x2.shape[0],)](x2, w.contiguous(), r2, y, ro, d, eps,
                                        HAS_RES=residual is not None, BD=triton.next_power_of_2(d),
                                        num_warps=warps_for(d))
    if residual is None:
        return y.reshape(x.shape)
    return y.reshape(x.shape), ro.reshape(x.shape)
