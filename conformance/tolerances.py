"""THE tolerance table of conformance: how close a backend must come to the
float64 reference, per (op, input dtype, fp8 format). Nothing else in dsport
states a tolerance.

A bound is derived, not guessed. Three error sources add up, each in units of
a unit roundoff u (half an ulp at 1.0) of the dtype that causes it:

* ``out_ulps * u(out)``: the final rounding to the output dtype the spec
  declares (bf16 out: 2^-8; fp32 out: 2^-24).
* ``inter_ulps * u(in)``: intermediates legitimately re-rounded to the input
  dtype (FlashMLA rounds the softmax probabilities P to bf16 before P.V).
* ``red_ulps * u(acc) * sqrt(n)``: fp32 accumulation over the spec's
  ``reduction`` dim of length n; rounding errors of a long sum grow like a
  random walk, sqrt(n). Every kernel contract here accumulates in fp32
  (fp64 inputs: fp64). A row may name several reduction dims (attention
  sums over DQK for the logits, then over the keys for P.V): their sqrt add.
* ``angle_ulps * u(fp32) * max|t * f|``: RoPE angles t * f formed in fp32
  are off by about one ulp of the angle itself, which grows with position.
* ``exp_ulps * u(fp32) * logits``: softmax rounds the argument of its exp
  twice (the logit times the scale, then its difference from the running
  max; in base 2 for exp2 kernels), and an absolute error d there is a
  relative error d of that probability, so this error grows with the
  logits' size, not the output's.
  ``logits`` bounds the probability-weighted mean |s| of any row from the
  reference lse: the row max m lies in [lse - ln n, lse] and the weighted
  mean of m - s is at most the entropy, ln n, so |lse| + 2 ln n.
* ``cond_ulps * u(fp32) * condition``: an fp32 subtraction of nearly equal
  numbers (layer_norm's x - mean) loses what the condition number says,
  max over rows of |mean| / std; any fp32 two-pass kernel has this error,
  a one-pass E[x^2] - E[x]^2 variance has its square.

Their sum bounds the *peak-relative* max error, max|out - ref| / max|ref|.
Cosine similarity must reach 1 - max(cos_floor(out dtype), peak^2): a
relative RMS error e lowers the cosine by about e^2 / 2, so this is never
looser than the peak bound, and it catches errors spread over many elements
that stay below the peak bound one by one.

A row of :data:`TABLE` matches by op, dtype and fp8 format ("*" matches
anything); the most specific match wins, and its ``why`` is printed in
reports so every bound explains itself.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

UNIT_ROUNDOFF: dict[torch.dtype, float] = {
    torch.float64: 2.0 ** -53,
    torch.float32: 2.0 ** -24,
    torch.float16: 2.0 ** -11,
    torch.bfloat16: 2.0 ** -8,
    torch.float8_e4m3fn: 2.0 ** -4,
    torch.float8_e4m3fnuz: 2.0 ** -4,
}

COS_FLOOR: dict[torch.dtype, float] = {
    # Smallest cosine deficit 1 - cos demanded, by output dtype: bf16 1e-5 as in
    # FlashMLA's tests; the others scale with u^2 of the dtype, except float64,
    # whose u^2 (1e-32) is far below what the cosine itself can resolve when it
    # is computed in float64 (identical vectors can give 1 - 2e-16).
    torch.float64: 1e-12,
    torch.float32: 1e-10,
    torch.float16: 1e-6,
    torch.bfloat16: 1e-5,
}


@dataclass(frozen=True)
class Row:
    op: str = "*"
    dtype: str = "*"          # input float dtype name: "bfloat16", "float32", ...
    fp8: str = "*"            # fp8 element format of the case, "-" for none
    out_ulps: float = 2.0
    inter_ulps: float = 0.0
    red_ulps: float = 1.0
    reduction: tuple[str, ...] | None = None   # dims summed over; None: the spec's ``reduction``
    angle_ulps: float = 0.0
    exp_ulps: float = 0.0
    cond_ulps: float = 0.0
    why: str = ""

    def specificity(self) -> int:
        return (self.op != "*") * 4 + (self.dtype != "*") * 2 + (self.fp8 != "*")

    def matches(self, op: str, dtype: str, fp8: str) -> bool:
        return all(p == "*" or p == v for p, v in ((self.op, op), (self.dtype, dtype), (self.fp8, fp8)))


TABLE: tuple[Row, ...] = (
    Row(why="default: output rounding + fp32 accumulation over the reduction dim"),
    Row(dtype="bfloat16", inter_ulps=2.0,
        why="bf16 inputs: kernels may round one intermediate (e.g. a GEMM operand) back to bf16"),
    Row(dtype="float16", inter_ulps=2.0,
        why="fp16 inputs: kernels may round one intermediate back to fp16"),
    *(Row(op=op, inter_ulps=8.0, reduction=("DQK", keys), exp_ulps=2.0,
          why="softmax: exp, the running-max rescale per tile and the final normalization each round in the compute "
              "dtype; logits sum over DQK, outputs over the keys; exp's argument rounds relative to the logits' size")
      for op, keys in (("sparse_mla_prefill", "k"), ("sparse_mla_decode", "k"), ("mla_prefill_dense", "S"),
                       ("mla_decode_dense", "MB * BS"))),
    *(Row(op=op, dtype="bfloat16", inter_ulps=4.0, reduction=("DQK", keys), exp_ulps=2.0,
          why="P rounded to bf16 before P.V (FlashMLA, FlashAttention); the FP8 cache dequantizes exactly (ue8m0 scales)")
      for op, keys in (("sparse_mla_prefill", "k"), ("sparse_mla_decode", "k"), ("mla_prefill_dense", "S"),
                       ("mla_decode_dense", "MB * BS"))),
    Row(op="fp8_gemm", out_ulps=2.0, red_ulps=2.0,
        why="fp8 products are exact in fp32; partial sums per 128-block then two scale multiplies; bf16 out"),
    Row(op="indexer_logits", fp8="e4m3fn", red_ulps=2.0,
        why="fp8 q.k products exact in fp32 against the quant-mimicking reference; fp32 sum over heads and dims"),
    Row(op="indexer_logits", fp8="e4m3fnuz", red_ulps=2.0,
        why="fp8 q.k products exact in fp32 against the quant-mimicking reference; fp32 sum over heads and dims"),
    Row(op="moe_gate", red_ulps=2.0,
        why="gate scores in fp32 over dim; weights are sigmoid scores renormalized, compared where the expert sets agree"),
    Row(op="layer_norm", cond_ulps=4.0,
        why="x - mean in fp32 is off by ~u(fp32) * |mean| (a two-pass kernel; a one-pass variance is off by its square)"),
    Row(op="yarn_freqs", out_ulps=4.0,
        why="pow and the ramp blend in fp32"),
    Row(op="rope", out_ulps=4.0, inter_ulps=1.0, angle_ulps=2.0,
        why="angles t*f formed in fp32 (as DeepSeek's precompute_freqs_cis does) are off by ~1 ulp of t*f, "
            "which dominates at long positions; sin/cos and the rotation round once more"),
)


@dataclass(frozen=True)
class Tolerance:
    peak_rel: float           # bound on max|out - ref| / max|ref|
    cos_min: float            # bound on cosine similarity
    n: int                    # reduction length used
    row: Row

    def to_json(self) -> dict[str, Any]:
        return {"peak_rel": self.peak_rel, "cos_min": self.cos_min, "reduction_n": self.n,
                "row": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.row).items()}}


def row_for(op: str, dtype: str, fp8: str) -> Row:
    rows = [r for r in TABLE if r.matches(op, dtype, fp8)]
    return max(rows, key=Row.specificity)  # the catch-all default always matches


def tolerance(op: str, in_dtype: torch.dtype | None, out_dtype: torch.dtype, fp8: str | None,
              n: int | Sequence[int], max_angle: float = 0.0, condition: float = 0.0, logits: float = 0.0) -> Tolerance:
    """The bound for one output of one case.

    ``in_dtype`` is the case's float input dtype (None when every input is
    fp8/integer), ``out_dtype`` the dtype the spec declares for this output,
    ``n`` the length(s) of the reduction dim(s) (1 when there is none; see
    :func:`row_for` and ``Row.reduction`` for which dims), ``max_angle`` the
    largest RoPE angle of the case, ``condition`` the case's condition number
    (rows with ``cond_ulps``), ``logits`` the bound on the softmax-weighted
    mean |logit| (rows with ``exp_ulps``; see :func:`logit_size`)."""
    dtype_name = str(in_dtype).removeprefix("torch.") if in_dtype is not None else "-"
    row = row_for(op, dtype_name, fp8 or "-")
    u_out = UNIT_ROUNDOFF.get(out_dtype, 2.0 ** -24)
    u_in = UNIT_ROUNDOFF.get(in_dtype, u_out) if in_dtype is not None else u_out
    u_acc = UNIT_ROUNDOFF[torch.float64] if in_dtype == torch.float64 and out_dtype == torch.float64 else UNIT_ROUNDOFF[torch.float32]
    lengths = [max(int(x), 1) for x in ([n] if isinstance(n, int) else n)] or [1]
    peak = (row.out_ulps * u_out + row.inter_ulps * u_in + row.red_ulps * u_acc * sum(math.sqrt(x) for x in lengths)
            + row.angle_ulps * UNIT_ROUNDOFF[torch.float32] * abs(max_angle)
            + row.exp_ulps * UNIT_ROUNDOFF[torch.float32] * abs(logits)
            + row.cond_ulps * UNIT_ROUNDOFF[torch.float32] * abs(condition))
    floor = COS_FLOOR.get(out_dtype, COS_FLOOR[torch.float32])
    return Tolerance(peak_rel=peak, cos_min=1.0 - max(floor, peak * peak), n=sum(lengths), row=row)


def logit_size(lse: torch.Tensor, keys: int) -> float:
    """Bound on the probability-weighted mean |s| of the logits over every row, from the reference
    ``lse`` of those rows and the number of keys: |lse| + 2 ln(keys) (see the module docstring)."""
    finite = lse[torch.isfinite(lse)]
    if not finite.numel():
        return 0.0
    return float(finite.double().abs().max()) + 2.0 * math.log(max(int(keys), 1))


# -- log-scale statistics of attention (lse, max_logits) ------------------------------------------
LSE_OUT_ULPS = 1.0
"""Budget for an lse error, in units of the unit roundoff of the attention's ``out`` dtype (see
:func:`log_scale_tolerance`)."""
LSE_RED_ULPS = 2.0
"""fp32 rounding of the logits (a dot product of length DQK) and of the sum of exponentials."""


@dataclass(frozen=True)
class LogScaleTolerance:
    abs_err: float            # bound on |value - ref|, the same for every element of the case
    budget: float             # the consumer's part: LSE_OUT_ULPS * u(out dtype)
    fp32: float               # the arithmetic's part
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"abs_err": self.abs_err, "budget": self.budget, "fp32_rounding": self.fp32, "why": self.why}


def log_scale_tolerance(out_dtype: torch.dtype, n: int | Sequence[int], peak: float) -> LogScaleTolerance:
    """The absolute bound on lse and max_logits of one attention case.

    Consumers use lse only through exp(lse_a - lse_b): the weights that combine
    split-KV partial outputs (FlashMLA's combine kernel, FlashDecoding). An error
    e in lse is a relative error of about e in the combined output, whatever
    |lse| is, so the budget is what that output may lose anyway: one unit
    roundoff of ``out``'s dtype (bf16: 2^-8 = 0.0039). A bound proportional to
    |lse| would pass an lse off by 0.16 at lse = 10, a 17 % error in the combine
    weights, and a softmax denominator accumulated in bf16.

    On top of that budget, the legitimate fp32 error of the arithmetic:
    ``LSE_RED_ULPS * u(fp32) * (sqrt(DQK) * max(1, peak) + sqrt(keys))`` — the
    logits are fp32 dot products (bf16 x bf16 products are exact in fp32) of
    size up to ``peak`` (the case's largest |reference value|), then a sum of
    the exponentials over the keys. ``n`` is (DQK, keys) as in the attention
    rows of :data:`TABLE`."""
    lengths = [max(int(x), 1) for x in ([n] if isinstance(n, int) else n)] or [1]
    u32 = UNIT_ROUNDOFF[torch.float32]
    budget = LSE_OUT_ULPS * UNIT_ROUNDOFF.get(out_dtype, u32)
    fp32 = LSE_RED_ULPS * u32 * (math.sqrt(lengths[0]) * max(1.0, abs(peak)) + math.sqrt(lengths[-1]))
    return LogScaleTolerance(budget + fp32, budget, fp32,
                             "absolute: an lse error e is a relative error e of the split-KV combine weights "
                             "exp(lse_a - lse_b); budget one rounding of out's dtype, plus fp32 rounding of the logits")


# -- the model, end to end ---------------------------------------------------------------------
# A model has discrete decisions: FP8 re-quantization turns float32-vs-float64
# rounding into one-step differences, and those can flip a near-tied expert in
# the MoE gate or a key at the top-k boundary, which moves that token's logits a
# lot (seen: one position at cosine 0.85, the median at 0.9985). So the end-to-end
# bounds are on the median position (and the median decode step); the per-op
# checks, each on its own inputs, are where exactness is demanded.
MODEL_MIN_MEDIAN_COSINE = 0.99
"""Median over positions of the logits' cosine against the float64 model."""
MODEL_MIN_DECODE_MEDIAN = 0.999
"""Median over decode steps of the cosine between decoded and re-prefilled logits."""
