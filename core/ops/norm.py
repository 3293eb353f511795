"""Normalizations: rms_norm (optionally fused with the residual add) and the
indexer's layer_norm (SPEC §3)."""
from __future__ import annotations

from dsport.core.spec import OpSpec, Output, Param, Tensor, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (RMSNorm, Indexer.k_norm LayerNorm)"
EPS = Param("eps", (float,), 1e-6, minimum=0.0)

rms_norm = register(OpSpec(
    name="rms_norm", family="norm",
    summary="y = w * x * rsqrt(mean(x^2) + eps) in fp32; with residual, x = x + residual first and the sum is returned too.",
    args=(Tensor("x", ("*", "D")), Tensor("w", ("D",)), EPS, Tensor("residual", ("*", "D"), optional=True)),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),
             Output("residual", ("*", "D"), lambda a: a["x"].dtype, when="residual")),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 4.0 * _rows(d) * d["D"],
))

layer_norm = register(OpSpec(
    name="layer_norm", family="norm",
    summary="y = (x - mean) * rsqrt(var + eps) * w + b in fp32 (the indexer's k_norm, 128 dims).",
    args=(Tensor("x", ("*", "D")), Tensor("w", ("D",)), Tensor("b", ("D",)), EPS),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 7.0 * _rows(d) * d["D"],
))


def _rows(d) -> int:
    n = 1
    for s in d.get("*", ()):
        n *= s
    return n
