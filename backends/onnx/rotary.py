"""RoPE in both pairings and the Sylvester Hadamard rotation as ONNX graphs."""
from __future__ import annotations

import numpy as np
import torch

from .runtime import DOUBLE, FLOAT, Graph, cached, compile_graph, elem_of, signature, to_float


def rope_graph(g: Graph, x: str, positions: str, freqs: str, shape: tuple[int, int, int], interleaved: bool,
               elem: int) -> str:
    t, h, d = shape
    # angle = t * f reaches ~1e5 rad at long context, where a float32 angle is off by ~1e-2 rad: Cos/Sin in double
    ang = g.Mul(g.Unsqueeze(g.Cast(positions, to=DOUBLE), g.i64(1)), g.Unsqueeze(g.Cast(freqs, to=DOUBLE), g.i64(0)))
    cos = g.Unsqueeze(g.Cast(g.Cos(ang), to=FLOAT), g.i64(1))                        # [T, 1, D/2]
    sin = g.Unsqueeze(g.Cast(g.Sin(ang), to=FLOAT), g.i64(1))
    hf = to_float(g, x, elem)
    if interleaved:
        pairs = g.Reshape(hf, g.i64(t, h, d // 2, 2), allowzero=1)
        a, b = g.Split(pairs, axis=3, num_outputs=2, n_out=2)
        a, b = g.Squeeze(a, g.i64(3)), g.Squeeze(b, g.i64(3))
    else:
        a, b = g.Split(hf, axis=2, num_outputs=2, n_out=2)
    ra = g.Sub(g.Mul(a, cos), g.Mul(b, sin))
    rb = g.Add(g.Mul(a, sin), g.Mul(b, cos))
    if interleaved:
        y = g.Reshape(g.Concat(g.Unsqueeze(ra, g.i64(3)), g.Unsqueeze(rb, g.i64(3)), axis=3), g.i64(t, h, d), allowzero=1)
    else:
        y = g.Concat(ra, rb, axis=2)
    return y if elem == FLOAT else g.Cast(y, to=elem)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    shape, e = tuple(x.shape), elem_of(x)

    def build():
        g = Graph("rope")
        y = rope_graph(g, g.input("x", e, shape), g.input("positions", elem_of(positions), positions.shape),
                       g.input("freqs", elem_of(freqs), freqs.shape), shape, bool(interleaved), e)
        g.output(y, "y", e, shape)
        return compile_graph(g, [("y", x.dtype, shape)])
    return cached(("rope", signature(x, positions, freqs), bool(interleaved)), build)(x=x, positions=positions, freqs=freqs)[0]


def hadamard_matrix(d: int) -> np.ndarray:
    """Sylvester H_d * d^-0.5 in float32 (entries +-2^-k/2: exact for even log2 d, one rounding otherwise)."""
    m = np.ones((1, 1))
    while m.shape[0] < d:
        m = np.block([[m, m], [m, -m]])
    return (m * d ** -0.5).astype(np.float32)


def hadamard_graph(g: Graph, x: str, d: int, elem: int) -> str:
    y = g.MatMul(to_float(g, x, elem), g.const(hadamard_matrix(d)))
    return y if elem == FLOAT else g.Cast(y, to=elem)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    shape, e = tuple(x.shape), elem_of(x)

    def build():
        g = Graph("hadamard")
        g.output(hadamard_graph(g, g.input("x", e, shape), shape[-1], e), "y", e, shape)
        return compile_graph(g, [("y", x.dtype, shape)])
    return cached(("hadamard", signature(x)), build)(x=x)[0]


def yarn_freqs(dim: int = 64, theta: float = 10000.0, factor: float = 40.0, original_seq_len: int = 4096,
               beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """The table in float64 inside the graph (the spec's precision), one rounding to float32 at the end. The
    correction range [low, high] is two integers of the attributes, computed where the graph is built."""
    import math

    def corr(rot: float) -> float:
        return dim * math.log(original_seq_len / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    half = dim // 2

    def build():
        g = Graph("yarn_freqs")
        i = g.const(np.arange(half, dtype=np.float64), np.float64)
        f = g.Reciprocal(g.Pow(np.float64(theta), g.Div(g.Mul(i, np.float64(2.0)), np.float64(dim))))
        ramp = g.Clip(g.Div(g.Sub(i, np.float64(low)), np.float64((high - low) or 0.001)), np.float64(0), np.float64(1))
        y = g.Add(g.Mul(g.Div(f, np.float64(factor)), ramp), g.Mul(f, g.Sub(np.float64(1), ramp)))
        g.output(g.Cast(y, to=FLOAT), "freqs", FLOAT, (half,))
        return compile_graph(g, [("freqs", torch.float32, (half,))])
    key = ("yarn_freqs", int(dim), float(theta), float(factor), int(original_seq_len), float(beta_fast), float(beta_slow))
    return cached(key, build)()[0]
