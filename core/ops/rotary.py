"""Position and outlier transforms: the YaRN frequency table, RoPE in both
pairings, and the Sylvester Hadamard rotation (SPEC §3)."""
from __future__ import annotations

import torch

from dsport.core.ops.norm import _rows
from dsport.core.spec import Check, OpSpec, Output, Param, Tensor, register

SRC = "DeepSeek-V3.2-Exp inference/model.py (precompute_freqs_cis, apply_rotary_emb, rotate_activation) after the 2025-11-17 indexer-rope fix"

yarn_freqs = register(OpSpec(
    name="yarn_freqs", family="rotary",
    summary="YaRN-corrected inverse frequencies f_i, i < dim/2 (angle(t, i) = t * f_i).",
    args=(Param("dim", (int,), 64, minimum=2), Param("theta", (float, int), 10000.0, minimum=1.0),
          Param("factor", (float, int), 40.0, minimum=1.0), Param("original_seq_len", (int,), 4096, minimum=1),
          Param("beta_fast", (float, int), 32), Param("beta_slow", (float, int), 1)),
    outputs=(Output("freqs", ("dim // 2",), torch.float32),),
    checks=(Check("dim", "an even number", lambda a, d: a["dim"] % 2 == 0, lambda a, d: a["dim"]),),
    metric="close", source=SRC + "; YaRN paper",
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
))

hadamard = register(OpSpec(
    name="hadamard", family="rotary",
    summary="y = x . H_D * D^-0.5 with H the Sylvester Hadamard matrix (orthonormal; spreads outliers before FP8).",
    args=(Tensor("x", ("*", "D")),),
    outputs=(Output("y", ("*", "D"), lambda a: a["x"].dtype),),
    checks=(Check("x", "a power-of-two last dim", lambda a, d: d["D"] > 0 and d["D"] & (d["D"] - 1) == 0, lambda a, d: d["D"]),),
    metric="close", reduction="D", source="DeepSeek-V3.2-Exp inference/model.py rotate_activation (fast_hadamard_transform)",
    flops=lambda d: float(_rows(d) * d["D"] * max(d["D"].bit_length() - 1, 1)),
))
