"""Position and outlier transforms: the YaRN frequency table, RoPE in both
pairings, and the Sylvester Hadamard rotation (SPEC §3)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from .hostile import strided_views
from ..spec import DEEPSEEK, EDGE, TINY, Case, Check, OpSpec, Output, Param, Tensor, leading_rows, randn, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (precompute_freqs_cis, apply_rotary_emb, rotate_activation) after the 2025-11-17 indexer-rope fix"


def _yarn_cases() -> list[Case]:
    c = "yarn_freqs"
    return [
        Case(c, "v32", lambda g: {}, tags=DEEPSEEK, note="the release table: dim 64, theta 1e4, factor 40, 4096, 32/1"),
        Case(c, "tiny", lambda g: {"dim": 8, "original_seq_len": 64}, tags=TINY),
        Case(c, "no-scaling", lambda g: {"factor": 1.0}, tags=EDGE, note="factor 1: the plain RoPE table"),
        Case(c, "dim128-theta1e6", lambda g: {"dim": 128, "theta": 1_000_000.0, "factor": 8.0, "original_seq_len": 8192}),
        Case(c, "int-params", lambda g: {"dim": 64, "theta": 10000, "factor": 40, "beta_fast": 32, "beta_slow": 1}, tags=EDGE),
    ]


def _plain_freqs(d: int) -> torch.Tensor:
    """theta^(-2i/d) in float32: any frequency table will do for rope itself."""
    return 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)


def _rope_case(t: int, h: int, d: int, interleaved: bool, max_pos: int = 4096, dtype=torch.bfloat16):
    def make(gen):
        return {"x": randn(gen, t, h, d, dtype=dtype), "positions": torch.randint(0, max_pos, (t,), generator=gen),
                "freqs": _plain_freqs(d), "interleaved": interleaved}
    return make


def _rope_cases() -> list[Case]:
    c, r = "rope", V32.qk_rope_head_dim

    def nan_row(gen):
        args = _rope_case(3, 2, 16, False)(gen)
        args["x"][1, 0, 3] = float("nan")
        return args

    def non_contiguous(gen):
        args = _rope_case(6, 4, 32, False)(gen)
        args["x"] = randn(gen, 4, 6, 64)[..., ::2].transpose(0, 1)  # strided in two dims
        return args

    def int32_positions(gen):
        args = _rope_case(5, 3, 16, True)(gen)
        args["positions"] = args["positions"].int()
        return args

    return [
        Case(c, "tiny-interleaved", _rope_case(3, 2, 8, True), tags=TINY),
        Case(c, "tiny-rotate-half", _rope_case(3, 2, 8, False), tags=TINY),
        Case(c, "mla-q-pe", _rope_case(8, V32.n_heads, r, True), tags=DEEPSEEK, note="MLA: last 64 dims of each head, interleaved"),
        Case(c, "mla-k-pe", _rope_case(8, 1, r, True), tags=DEEPSEEK),
        Case(c, "indexer-q", _rope_case(8, V32.index_n_heads, r, False), tags=DEEPSEEK,
             note="indexer: first 64 of 128 dims, NOT interleaved"),
        Case(c, "indexer-k", _rope_case(8, 1, r, False), tags=DEEPSEEK),
        Case(c, "long-positions", _rope_case(16, 2, r, True, max_pos=V32.original_seq_len * int(V32.rope_factor), dtype=torch.float32),
             tags=EDGE, note="positions up to 163840: a float32 angle is off by up to |angle| * 2^-24 here"),
        Case(c, "long-positions-rotate-half", _rope_case(16, 2, r, False, max_pos=V32.original_seq_len * int(V32.rope_factor)),
             tags=EDGE, note="bf16, positions up to 163840: positions held in fp16/bf16 lose them"),
        Case(c, "strided-views", strided_views(_rope_case(6, 4, 32, False)), tags=EDGE,
             note="x, positions and freqs as offset views of padded, poisoned buffers"),
        Case(c, "T0", _rope_case(0, 4, r, True), tags=EDGE),
        Case(c, "T1", _rope_case(1, 4, r, False), tags=EDGE),
        Case(c, "D2", _rope_case(4, 1, 2, False), tags=EDGE),
        Case(c, "int32-positions", int32_positions, tags=EDGE),
        Case(c, "nan", nan_row, tags=EDGE),
        Case(c, "non-contiguous", non_contiguous, tags=EDGE),
    ]


def _hadamard_cases() -> list[Case]:
    c, d = "hadamard", V32.index_head_dim

    def outliers(gen):
        x = torch.randn(4, d, generator=gen)
        x[1, 5] = 1000.0  # the outlier the rotation spreads before FP8
        x[2] = 0.0
        x[3, 7] = float("nan")
        return {"x": x.bfloat16()}

    return [
        Case(c, "tiny", lambda g: {"x": randn(g, 3, 4)}, tags=TINY),
        Case(c, "D1", lambda g: {"x": randn(g, 3, 1)}, tags=EDGE),
        Case(c, "D2", lambda g: {"x": randn(g, 3, 2)}, tags=EDGE),
        Case(c, "index-q", lambda g: {"x": randn(g, 8, V32.index_n_heads, d)}, tags=DEEPSEEK),
        Case(c, "index-k", lambda g: {"x": randn(g, 64, d)}, tags=DEEPSEEK),
        Case(c, "T0", lambda g: {"x": randn(g, 0, d)}, tags=EDGE),
        Case(c, "outlier-zero-nan-rows", outliers, tags=EDGE),
        Case(c, "non-contiguous", lambda g: {"x": randn(g, d, 6).t()}, tags=EDGE),
        Case(c, "fp32-256", lambda g: {"x": randn(g, 5, 256, dtype=torch.float32)}),
        Case(c, "strided-views", strided_views(lambda g: {"x": randn(g, 6, d)}), tags=EDGE),
    ]


def _yarn_ok(a, d) -> bool:
    return a["theta"] > 1 and 0 < a["beta_slow"] < a["beta_fast"]


yarn_freqs = register(OpSpec(
    name="yarn_freqs", family="rotary",
    summary="YaRN-corrected inverse frequencies f_i, i < dim/2 (angle(t, i) = t * f_i).",
    args=(Param("dim", (int,), 64, minimum=2), Param("theta", (float, int), 10000.0, minimum=1.0),
          Param("factor", (float, int), 40.0, minimum=1.0), Param("original_seq_len", (int,), 4096, minimum=1),
          Param("beta_fast", (float, int), 32), Param("beta_slow", (float, int), 1)),
    outputs=(Output("freqs", ("dim // 2",), torch.float32),),
    checks=(Check("dim", "an even number", lambda a, d: a["dim"] % 2 == 0, lambda a, d: a["dim"]),
            Check("beta_fast", "theta > 1 and beta_fast > beta_slow > 0 (the correction range needs both logs)", _yarn_ok,
                  lambda a, d: f"theta={a['theta']}, beta_fast={a['beta_fast']}, beta_slow={a['beta_slow']}")),
    metric="close", source=SRC + "; YaRN paper",
    cases=_yarn_cases,
))

rope = register(OpSpec(
    name="rope", family="rotary",
    summary="Rotate pairs of the last dim by angle(positions[t], i). interleaved: pairs (x[2i], x[2i+1]); "
            "otherwise rotate-half pairs (x[i], x[i + D/2]). MLA: last 64 dims, interleaved. Indexer: first 64, NOT interleaved.",
    args=(Tensor("x", ("T", "H", "D")), Tensor("positions", ("T",), ("int",)), Tensor("freqs", ("D // 2",)),
          Param("interleaved", (bool,), doc="pairing; no default on purpose: every caller must choose")),
    outputs=(Output("y", ("T", "H", "D"), lambda a: a["x"].dtype),),
    checks=(Check("x", "an even last dim D", lambda a, d: d["D"] % 2 == 0, lambda a, d: d["D"]),),
    metric="close", source=SRC,
    flops=lambda d: 3.0 * d["T"] * d["H"] * d["D"],
    cases=_rope_cases,
))

hadamard = register(OpSpec(
    name="hadamard", family="rotary",
    summary="y = x . H_D * D^-0.5 with H the Sylvester Hadamard matrix (orthonormal; spreads outliers before FP8).",
    args=(Tensor("x", ("*", "D")),),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),),
    checks=(Check("x", "a power-of-two last dim", lambda a, d: d["D"] > 0 and d["D"] & (d["D"] - 1) == 0, lambda a, d: d["D"]),),
    metric="close", reduction="D", source="DeepSeek-V3.2-Exp inference/model.py rotate_activation (fast_hadamard_transform)",
    flops=lambda d: float(leading_rows(d) * d["D"] * max(d["D"].bit_length() - 1, 1)),
    cases=_hadamard_cases,
))
