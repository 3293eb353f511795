"""Placing one measurement under the roofline.

The roofline time of a call is t* = max(F / P, B / W) for F FLOPs, B bytes,
compute peak P of its math class and bandwidth W: no implementation can beat
it. The share of the roofline is t* / t_measured (1.0 = at the roof). When a
peak is unknown (null in hardware.yaml) only the known term is used and the
share is marked partial."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .hardware import Roofline
from ..spec import DTYPE_GROUPS, OpSpec, Tensor


def math_class(spec: OpSpec, bound: Mapping[str, Any]) -> str:
    """'fp8' when the op's tensor operands are FP8 (FP8 tensor-core peak applies), else 'bf16'.
    Byte-packed caches (uint8) are dequantized before the math, so they count as bf16."""
    fp8 = DTYPE_GROUPS["fp8"]
    return "fp8" if any(isinstance(a, Tensor) and isinstance(bound.get(a.name), torch.Tensor) and bound[a.name].dtype in fp8
                        for a in spec.args) else "bf16"


def roofline_time(flops: float, nbytes: float, roof: Roofline, cls: str) -> tuple[float | None, str, bool]:
    """(t*, bound, partial): the roofline time, which resource bounds it, and whether a peak was unknown."""
    peak, bw = roof.peak_flops.get(cls), roof.bandwidth
    tc = flops / peak if peak else None
    tm = nbytes / bw if bw else None
    partial = (flops > 0 and not peak) or (nbytes > 0 and not bw)
    if tc is None and tm is None:
        return None, "unknown", True
    if tm is None or (tc is not None and tc >= tm):
        return tc, "compute", partial
    return tm, "memory", partial


def place(flops: float, nbytes: float, seconds: float, roof: Roofline, cls: str) -> dict[str, Any]:
    t_star, bound, partial = roofline_time(flops, nbytes, roof, cls)
    return {"tflops": flops / seconds / 1e12, "gbps": nbytes / seconds / 1e9,
            "intensity": flops / nbytes if nbytes else None, "math": cls, "bound": bound,
            "roofline_s": t_star, "roofline_share": t_star / seconds if t_star is not None else None,
            "roofline_partial": partial}
