"""FP8 quantization: act_quant, dequant, weight_dequant, fp8_gemm (SPEC §2)."""
from __future__ import annotations

import torch

from ..fp8 import FP8_FORMATS, SCALE_FORMATS, Fp8Format, ScaleFormat, fp8_format
from .hostile import strided_views
from ..spec import DEEPSEEK_FULL, EDGE, QUICK, TINY, Case, Check, OpSpec, Output, Param, Tensor, randn, register

SRC = "DeepSeek-V3.2-Exp inference/kernel.py (act_quant, fp8_gemm, weight_dequant); DeepGEMM fp8 scaling"
FMT = Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS), doc="FP8 element format")
SCALE = Param("scale_fmt", (str, ScaleFormat), "ue8m0", tuple(SCALE_FORMATS), doc="scale format")
BLOCK = Param("block", (int,), 128, minimum=1, doc="quantization group length")


def _divisible(arg: str, dim: str, by: str) -> Check:
    return Check(arg, f"{dim} divisible by {by}", lambda a, d: d[dim] % (d[by] if by in d else int(by)) == 0,
                 lambda a, d: f"{dim}={d[dim]}")


def _same_fp8(*args: str) -> Check:
    return Check(args[-1], f"the same fp8 dtype as '{args[0]}'",
                 lambda a, d: len({a[n].dtype for n in args}) == 1, lambda a, d: str(a[args[-1]].dtype))


def _act_quant_cases() -> list[Case]:
    def with_outliers(gen):
        x = randn(gen, 4, 512, dtype=torch.float32)
        x[1, 7] = 900.0  # one outlier sets its group's scale
        return {"x": x.bfloat16()}

    def zeros_and_fmax(gen):
        x = torch.zeros(3, 256)
        x[1] = 448.0
        x[2, ::2], x[2, 1::2] = 448.0, -448.0
        return {"x": x}

    def signed_zeros(gen):
        """Groups with amax ~200 and many tiny negatives that round to zero (-0 in e4m3fn, 0x00 in fnuz)."""
        x = torch.randn(4, 256, generator=gen)
        x[:, 1::2] = -1e-5 * x[:, 1::2].abs()
        x[:, 0], x[:, 128] = 200.0, -200.0
        return {"x": x.bfloat16()}

    def nonfinite(gen):
        """A group holding +inf, one holding NaN, one -inf: their scales are non-finite (never 1)."""
        x = randn(gen, 3, 384, dtype=torch.float32)
        x[0, 5], x[1, 130], x[2, 300] = float("inf"), float("nan"), float("-inf")
        return {"x": x}

    cases = [Case("act_quant", "tiny", lambda g: {"x": randn(g, 2, 128)}, tags=TINY)]
    cases += [
        Case("act_quant", "fnuz-negative-zero", lambda g: {**signed_zeros(g), "fmt": "e4m3fnuz"}, tags=EDGE,
             note="e4m3fnuz has no -0 (0x80 is its NaN): a value rounding to -0 is written 0x00"),
        Case("act_quant", "fnuz-negative-zero-fp32", lambda g: {**signed_zeros(g), "fmt": "e4m3fnuz", "scale_fmt": "fp32"}, tags=EDGE),
        Case("act_quant", "nonfinite-groups", nonfinite, tags=EDGE, note="inf / NaN amax: non-finite scale, NaN codes"),
        Case("act_quant", "nonfinite-groups-fp32", lambda g: {**nonfinite(g), "scale_fmt": "fp32"}, tags=EDGE),
        Case("act_quant", "strided-views", strided_views(lambda g: {"x": randn(g, 6, 256, scale=3.0)}), tags=EDGE),
        Case("act_quant", "fp32-strided-views", strided_views(lambda g: {"x": randn(g, 6, 256, scale=3.0, dtype=torch.float32),
                                                                         "fmt": "e4m3fnuz"}), tags=EDGE),
    ]
    for fmt in FP8_FORMATS:
        for sf in SCALE_FORMATS:
            cases.append(Case("act_quant", f"{fmt}-{sf}", lambda g, fmt=fmt, sf=sf: {
                "x": randn(g, 33, 1024, scale=3.0), "fmt": fmt, "scale_fmt": sf}))
    cases += [
        Case("act_quant", "T0", lambda g: {"x": torch.empty(0, 256, dtype=torch.bfloat16)}, tags=EDGE),
        Case("act_quant", "outlier", with_outliers, tags=EDGE),
        Case("act_quant", "zeros-and-fmax", zeros_and_fmax, tags=EDGE),
        Case("act_quant", "zeros-and-fmax-fnuz", lambda g: {**zeros_and_fmax(g), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case("act_quant", "non-contiguous", lambda g: {"x": randn(g, 256, 64).t()}, tags=EDGE),
        Case("act_quant", "3d-heads", lambda g: {"x": randn(g, 5, 64, 128)}, tags=QUICK),
        Case("act_quant", "ds-hidden", lambda g: {"x": randn(g, 16, 7168)}, tags=DEEPSEEK_FULL),
    ]
    return cases


act_quant = register(OpSpec(
    name="act_quant", family="quant",
    summary="Per-row, per-128-group FP8 quantization: y = cast(clamp(x / s)), s from the group amax.",
    args=(Tensor("x", ("*", "N")), BLOCK, FMT, SCALE),
    outputs=(Output("y", ("*", "N"), lambda a: fp8_format(a["fmt"]).dtype),
             Output("s", ("*", "N // block"), torch.float32)),
    checks=(_divisible("x", "N", "block"),),
    metric="exact", source=SRC,
    flops=lambda d: 0.0,
    cases=_act_quant_cases,
    doc="SPEC §10: a group whose amax is inf or NaN gets an inf / NaN scale (never a finite stand-in such as 1) and NaN "
        "codes where x / s is NaN; e4m3fnuz writes a value that rounds to -0 as 0x00 (0x80 is its NaN).",
))


def _quantized(gen: torch.Generator, rows: int, n: int, fmt: str = "e4m3fn", spread: float = 4.0):
    f = FP8_FORMATS[fmt]
    y = (torch.randn(rows, n, generator=gen) * f.max / spread).clamp(-f.max, f.max).to(f.dtype)
    s = torch.exp2(torch.randint(-8, 3, (rows, n // 128), generator=gen).float())
    return y, s


def _transposed_y(gen):
    y, s = _quantized(gen, 6, 384, "e4m3fnuz")
    return {"y": y.t().contiguous().t(), "s": s.t().contiguous().t()}


dequant = register(OpSpec(
    name="dequant", family="quant",
    summary="Inverse of act_quant: x = y * s, s broadcast over its group along the last dim.",
    args=(Tensor("y", ("*", "N"), ("fp8",)), Tensor("s", ("*", "N // block"), ("fp32",)), BLOCK),
    outputs=(Output("x", ("*", "N"), torch.float32),),
    checks=(_divisible("y", "N", "block"),),
    metric="exact", source=SRC,
    cases=lambda: [
        Case("dequant", "tiny", lambda g: dict(zip("ys", _quantized(g, 2, 256)))),
        Case("dequant", "fnuz", lambda g: dict(zip("ys", _quantized(g, 9, 512, "e4m3fnuz")))),
        Case("dequant", "T0", lambda g: dict(zip("ys", _quantized(g, 0, 256))), tags=EDGE),
        Case("dequant", "strided-views", strided_views(lambda g: dict(zip("ys", _quantized(g, 5, 384)))), tags=EDGE,
             note="y and s as offset views of padded, poisoned buffers"),
        Case("dequant", "transposed", _transposed_y, tags=EDGE, note="y and s column-major"),
    ],
))


def _weight(gen: torch.Generator, n: int, k: int, fmt: str = "e4m3fn"):
    f = FP8_FORMATS[fmt]
    w = (torch.randn(n, k, generator=gen) * f.max / 4).clamp(-f.max, f.max).to(f.dtype)
    s = torch.rand(-(-n // 128), -(-k // 128), generator=gen) * 1e-3 + 1e-4
    return w, s


weight_dequant = register(OpSpec(
    name="weight_dequant", family="quant",
    summary="Dequantize a 128x128-block-scaled FP8 weight: W = w * s[n // 128, k // 128].",
    args=(Tensor("w", ("N", "K"), ("fp8",)), Tensor("s", ("cdiv(N, block)", "cdiv(K, block)"), ("fp32",)), BLOCK),
    outputs=(Output("x", ("N", "K"), torch.float32),),
    metric="exact", source=SRC + "; HF weight_scale_inv",
    cases=lambda: [
        Case("weight_dequant", "tiny", lambda g: dict(zip("ws", _weight(g, 256, 384)))),
        Case("weight_dequant", "ragged-edges", lambda g: dict(zip("ws", _weight(g, 200, 130))), tags=EDGE),
        Case("weight_dequant", "fnuz", lambda g: dict(zip("ws", _weight(g, 128, 256, "e4m3fnuz")))),
        Case("weight_dequant", "strided-views", strided_views(lambda g: dict(zip("ws", _weight(g, 200, 256)))), tags=EDGE,
             note="w and s as offset views of padded, poisoned buffers"),
        Case("weight_dequant", "transposed", lambda g: {"w": _weight(g, 256, 130)[0].t().contiguous().t(),
                                                        "s": _weight(g, 256, 130)[1].t().contiguous().t()}, tags=EDGE),
    ],
))


def _gemm_case(m: int, n: int, k: int, fmt: str = "e4m3fn"):
    def make(gen):
        a, sa = _quantized(gen, m, k, fmt)
        b, sb = _weight(gen, n, k, fmt)
        return {"a": a, "sa": sa, "b": b, "sb": sb}
    return make


def _transposed_b(make):
    def wrapped(gen):
        a = make(gen)
        return {**a, "b": a["b"].t().contiguous().t(), "sb": a["sb"].t().contiguous().t()}
    return wrapped


fp8_gemm = register(OpSpec(
    name="fp8_gemm", family="quant",
    summary="Block-scaled FP8 GEMM: C = sum_kb (a_kb . b_kb) * sa[m, kb] * sb[n // 128, kb], fp32 accumulate, bf16 out.",
    args=(Tensor("a", ("M", "K"), ("fp8",)), Tensor("sa", ("M", "K // 128"), ("fp32",)),
          Tensor("b", ("N", "K"), ("fp8",)), Tensor("sb", ("cdiv(N, 128)", "K // 128"), ("fp32",))),
    outputs=(Output("c", ("M", "N"), torch.bfloat16),),
    checks=(_divisible("a", "K", "128"), _same_fp8("a", "b")),
    metric="close", reduction="K", source=SRC + "; DeepGEMM gemm_fp8_fp8_bf16_nt",
    flops=lambda d: 2.0 * d["M"] * d["N"] * d["K"],
    cases=lambda: [
        Case("fp8_gemm", "tiny", _gemm_case(4, 128, 256), tags=TINY),
        Case("fp8_gemm", "ragged-n", _gemm_case(7, 200, 384), tags=EDGE),
        Case("fp8_gemm", "fnuz", _gemm_case(16, 256, 512, "e4m3fnuz")),
        Case("fp8_gemm", "M0", _gemm_case(0, 128, 128), tags=EDGE),
        Case("fp8_gemm", "strided-views", strided_views(_gemm_case(7, 200, 384)), tags=EDGE,
             note="a, sa, b (the weight) and sb as offset views of padded, poisoned buffers"),
        Case("fp8_gemm", "transposed-b", _transposed_b(_gemm_case(4, 256, 256, "e4m3fnuz")), tags=EDGE,
             note="b (and sb) column-major, as a weight stored transposed"),
        Case("fp8_gemm", "ds-wq-b", _gemm_case(32, 1536, 1536), tags=DEEPSEEK_FULL),
        Case("fp8_gemm", "nonfinite-operands", lambda g: _nonfinite_gemm(_gemm_case(4, 256, 256)(g)), tags=EDGE,
             note="a NaN code in a and in b, and a group as act_quant writes an inf one (zeros, one NaN code, scale inf): "
                  "NaN rows and columns, never 0"),
        Case("fp8_gemm", "nonfinite-operands-fnuz", lambda g: _nonfinite_gemm(_gemm_case(4, 256, 256, "e4m3fnuz")(g)), tags=EDGE,
             note="the same in e4m3fnuz, whose one NaN code is 0x80 (e4m3fn's -0)"),
    ],
))


def _nonfinite_gemm(a: dict) -> dict:
    """Row 1 of a and row 3 of b (an output column) hold a NaN code; row 2's second group is what
    act_quant makes of a group holding +inf: zero codes, one NaN code, scale inf."""
    nan = 0x7F if a["a"].dtype == torch.float8_e4m3fn else 0x80
    a["a"].view(torch.uint8)[1, 5] = nan
    a["b"].view(torch.uint8)[3, 200] = nan
    a["a"].view(torch.uint8)[2, 128:256] = 0
    a["a"].view(torch.uint8)[2, 140] = nan
    a["sa"][2, 1] = float("inf")
    return a
