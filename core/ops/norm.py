"""Normalizations: rms_norm (optionally fused with the residual add) and the
indexer's layer_norm (SPEC §3)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from .hostile import strided_views
from ..spec import DEEPSEEK, EDGE, TINY, Case, OpSpec, Output, Param, Tensor, leading_rows, randn, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (RMSNorm, Indexer.k_norm LayerNorm)"
EPS = Param("eps", (float,), 1e-6, minimum=0.0)


def _weight(gen: torch.Generator, d: int) -> torch.Tensor:
    """Norm weights near 1, stored in float32 as the release stores them."""
    return 1.0 + 0.1 * torch.randn(d, generator=gen)


def _special_rows(gen: torch.Generator, d: int) -> torch.Tensor:
    """Rows: random, all zeros, one NaN, one +inf, a large constant whose
    squares still fit fp32 (bf16)."""
    x = torch.randn(5, d, generator=gen)
    x[1] = 0.0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    x[4] = 1.0e15
    return x.bfloat16()


def _tiny_rows(gen: torch.Generator, n: int, d: int, dtype=torch.bfloat16) -> torch.Tensor:
    """Rows whose magnitudes step from 1e-3 down to 1e-5 (tiny activations, e.g. after a small residual)."""
    mags = torch.logspace(-3, -5, n).unsqueeze(1)
    return (torch.randn(n, d, generator=gen) * mags).to(dtype)


def _rms_cases() -> list[Case]:
    c = "rms_norm"
    return [
        Case(c, "tiny", lambda g: {"x": randn(g, 2, 64), "w": _weight(g, 64)}, tags=TINY),
        Case(c, "residual", lambda g: {"x": randn(g, 3, 7, 512), "w": _weight(g, 512), "residual": randn(g, 3, 7, 512, scale=4.0)}),
        Case(c, "fp32-eps", lambda g: {"x": randn(g, 4, 256, dtype=torch.float32), "w": _weight(g, 256), "eps": 1e-3}),
        Case(c, "T0", lambda g: {"x": randn(g, 0, 512), "w": _weight(g, 512)}, tags=EDGE),
        Case(c, "T0-residual", lambda g: {"x": randn(g, 0, 512), "w": _weight(g, 512), "residual": randn(g, 0, 512)}, tags=EDGE),
        Case(c, "T1", lambda g: {"x": randn(g, 1, 512), "w": _weight(g, 512), "residual": randn(g, 1, 512)}, tags=EDGE),
        Case(c, "zeros-nan-inf-rows", lambda g: {"x": _special_rows(g, 256), "w": _weight(g, 256)}, tags=EDGE,
             note="zero row -> 0 (eps keeps rsqrt finite); NaN and inf rows -> NaN, reported not hidden"),
        Case(c, "non-contiguous", lambda g: {"x": randn(g, 512, 8).t(), "w": _weight(g, 512),
                                              "residual": randn(g, 512, 8).t()}, tags=EDGE),
        Case(c, "tiny-rows", lambda g: {"x": _tiny_rows(g, 6, 512), "w": _weight(g, 512)}, tags=EDGE,
             note="rows of magnitude 1e-3 .. 1e-5: mean(x^2) at or below eps, where eps inside the sqrt matters"),
        Case(c, "tiny-rows-fp32-residual", lambda g: {"x": _tiny_rows(g, 6, 256, torch.float32), "w": _weight(g, 256),
                                                      "residual": _tiny_rows(g, 6, 256, torch.float32)}, tags=EDGE),
        Case(c, "strided-views", strided_views(lambda g: {"x": randn(g, 6, 512), "w": _weight(g, 512),
                                                          "residual": randn(g, 6, 512)}), tags=EDGE),
        Case(c, "ds-q-norm", lambda g: {"x": randn(g, 16, V32.q_lora_rank), "w": _weight(g, V32.q_lora_rank)}, tags=DEEPSEEK),
        Case(c, "ds-kv-norm", lambda g: {"x": randn(g, 16, V32.kv_lora_rank), "w": _weight(g, V32.kv_lora_rank)}, tags=DEEPSEEK),
        Case(c, "ds-hidden-residual", lambda g: {"x": randn(g, 16, V32.dim), "w": _weight(g, V32.dim),
                                                  "residual": randn(g, 16, V32.dim, scale=8.0)}, tags=DEEPSEEK),
    ]


def _ln_cases() -> list[Case]:
    c, d = "layer_norm", V32.index_head_dim

    def constant_rows(g):
        x = torch.randn(3, d, generator=g)
        x[0] = 0.0
        x[1] = 5.0  # zero variance: output is exactly b
        return {"x": x.bfloat16(), "w": _weight(g, d), "b": 0.1 * torch.randn(d, generator=g)}

    def wb(g):
        return {"w": _weight(g, d), "b": 0.1 * torch.randn(d, generator=g)}

    return [
        Case(c, "tiny", lambda g: {"x": randn(g, 2, 8), "w": _weight(g, 8), "b": torch.zeros(8)}, tags=TINY),
        Case(c, "k-norm", lambda g: {"x": randn(g, 16, d, scale=3.0), **wb(g)}),
        Case(c, "offset", lambda g: {"x": (torch.randn(8, d, generator=g) + 100.0).bfloat16(), **wb(g)},
             note="large mean: a one-pass E[x^2]-E[x]^2 variance loses digits here"),
        Case(c, "T0", lambda g: {"x": randn(g, 0, d), **wb(g)}, tags=EDGE),
        Case(c, "T1", lambda g: {"x": randn(g, 1, d), **wb(g)}, tags=EDGE),
        Case(c, "constant-rows", constant_rows, tags=EDGE),
        Case(c, "nan-inf-rows", lambda g: {"x": _special_rows(g, d), **wb(g)}, tags=EDGE),
        Case(c, "non-contiguous", lambda g: {"x": randn(g, 4, d, 6).transpose(1, 2), **wb(g)}, tags=EDGE),
        Case(c, "fp32-offset", lambda g: {"x": torch.randn(8, d, generator=g) + 100.0, **wb(g)},
             note="fp32 input, mean 100: a one-pass variance E[x^2] - E[x]^2 loses ~4 digits of 7"),
        Case(c, "fp32-offset-1000", lambda g: {"x": torch.randn(8, d, generator=g) * 3.0 - 1000.0, **wb(g)}, tags=EDGE),
        Case(c, "tiny-rows", lambda g: {"x": _tiny_rows(g, 6, d), **wb(g)}, tags=EDGE, note="variance at or below eps"),
        Case(c, "strided-views", strided_views(lambda g: {"x": randn(g, 6, d, scale=3.0), **wb(g)}), tags=EDGE),
        Case(c, "ds-k-norm", lambda g: {"x": randn(g, 2, 256, d, scale=2.0), **wb(g)}, tags=DEEPSEEK),
    ]


rms_norm = register(OpSpec(
    name="rms_norm", family="norm",
    summary="y = w * x * rsqrt(mean(x^2) + eps) in fp32; with residual, x = x + residual first and the sum is returned too.",
    args=(Tensor("x", ("*", "D")), Tensor("w", ("D",)), EPS, Tensor("residual", ("*", "D"), optional=True)),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),
             Output("residual", ("*", "D"), lambda a: a["x"].dtype, when="residual")),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 4.0 * leading_rows(d) * d["D"],
    cases=_rms_cases,
))

layer_norm = register(OpSpec(
    name="layer_norm", family="norm",
    summary="y = (x - mean) * rsqrt(var + eps) * w + b in fp32 (the indexer's k_norm, 128 dims).",
    args=(Tensor("x", ("*", "D")), Tensor("w", ("D",)), Tensor("b", ("D",)), EPS),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 7.0 * leading_rows(d) * d["D"],
    cases=_ln_cases,
))
