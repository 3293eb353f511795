"""RMSNorm (optionally fused with the residual add) and LayerNorm as ONNX graphs, in fp32.

Opset 21 has no RMSNormalization (it arrives in 23), so RMSNorm is written out
from ReduceMean, Sqrt and Reciprocal; LayerNorm is the standard
LayerNormalization (opset 17) with its statistics in float32 (stash_type 1)."""
from __future__ import annotations

import numpy as np
import torch

from .runtime import FLOAT, Graph, cached, compile_graph, elem_of, signature, to_float


def rms_norm_graph(g: Graph, x: str, w: str, eps: float, residual: str | None, elem: int, w_elem: int) -> tuple[str, str]:
    """(y in x's dtype, the fp32 sum x + residual)."""
    h = to_float(g, x, elem)
    if residual is not None:
        h = g.Add(h, to_float(g, residual, elem))
    ms = g.ReduceMean(g.Mul(h, h), g.i64(-1), keepdims=1)
    y = g.Mul(g.Mul(h, g.Reciprocal(g.Sqrt(g.Add(ms, np.float32(eps))))), to_float(g, w, w_elem))
    return (y if elem == FLOAT else g.Cast(y, to=elem)), h


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6,
             residual: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    shape, e = tuple(x.shape), elem_of(x)

    def build():
        g = Graph("rms_norm")
        res = g.input("residual", e, shape) if residual is not None else None
        y, h = rms_norm_graph(g, g.input("x", e, shape), g.input("w", elem_of(w), w.shape), eps, res, e, elem_of(w))
        g.output(y, "y", e, shape)
        outs = [("y", x.dtype, shape)]
        if residual is not None:
            g.output(h if e == FLOAT else g.Cast(h, to=e), "sum", e, shape)
            outs.append(("sum", x.dtype, shape))
        return compile_graph(g, outs)
    run = cached(("rms_norm", signature(x, w, residual), float(eps)), build)
    if residual is None:
        return run(x=x, w=w)[0]
    return run(x=x, w=w, residual=residual)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    shape, e = tuple(x.shape), elem_of(x)

    def build():
        g = Graph("layer_norm")
        h = to_float(g, g.input("x", e, shape), e)
        wf = to_float(g, g.input("w", elem_of(w), w.shape), elem_of(w))
        bf = to_float(g, g.input("b", elem_of(b), b.shape), elem_of(b))
        y = g.LayerNormalization(h, wf, bf, axis=-1, epsilon=float(eps), stash_type=1)
        g.output(y if e == FLOAT else g.Cast(y, to=e), "y", e, shape)
        return compile_graph(g, [("y", x.dtype, shape)])
    return cached(("layer_norm", signature(x, w, b), float(eps)), build)(x=x, w=w, b=b)[0]
