"""MoE routing and expert compute as ONNX graphs.

A static-shape ONNX graph cannot sort tokens into per-expert segments of
data-dependent length, so ``moe_experts`` runs every expert on every token as
batched MatMuls ([E, T, I]) and keeps a (token, expert) pair's contribution
only where the routing selects it — E/K times the useful FLOPs, the price of
a graph any execution provider can compile ahead of time. The selection is a
``Where`` after each product, so an unselected pair contributes exactly 0
whatever its values, and the weights of -1 slots are never read.

The grouped GEMMs compute one GEMM per 128-row tile (the contiguous layout
holds one group per tile) or per group (the masked layout) and zero the
padding rows with ``Where``."""
from __future__ import annotations

import numpy as np
import torch

from .runtime import FLOAT, INT32, INT64, Graph, cached, compile_graph, elem_of, signature, to_float

NEG_INF = np.float32(-np.inf)
ALIGN = 128


def moe_gate_graph(g: Graph, x: str, w: str, bias: str | None, t: int, e: int, n_group: int, topk_group: int,
                   topk: int, route_scale: float, score_func: str) -> tuple[str, str]:
    logits = g.MatMul(x, g.Transpose(w, perm=[1, 0]))                                            # [T, E]
    scores = g.Softmax(logits, axis=-1) if score_func == "softmax" else g.Sigmoid(logits)
    sel = scores if bias is None else g.Add(scores, g.Unsqueeze(bias, g.i64(0)))
    if n_group > 1:
        per = e // n_group
        grouped = g.Reshape(sel, g.i64(t, n_group, per), allowzero=1)
        if bias is None:  # DeepSeek's Gate: a group scores its max without a bias, the sum of its top-2 with one
            gs = g.ReduceMax(grouped, g.i64(-1), keepdims=0)
        else:
            top2, _ = g.TopK(grouped, g.i64(min(2, per)), axis=-1, n_out=2)
            gs = g.ReduceSum(top2, g.i64(-1), keepdims=0)
        _, best = g.TopK(gs, g.i64(topk_group), axis=-1, n_out=2)                                 # [T, topk_group]
        keep = g.ScatterElements(g.const(np.zeros((t, n_group), np.float32)), best,
                                 g.const(np.ones((t, topk_group), np.float32)), axis=1)
        masked = g.Where(g.Unsqueeze(g.Greater(keep, np.float32(0)), g.i64(2)), grouped, NEG_INF)
        sel = g.Reshape(masked, g.i64(t, e), allowzero=1)
    _, ids = g.TopK(sel, g.i64(topk), axis=-1, n_out=2)                                          # int64 [T, topk]
    wts = g.GatherElements(scores, ids, axis=1)
    if score_func == "sigmoid":
        wts = g.Div(wts, g.ReduceSum(wts, g.i64(-1), keepdims=1))
    return g.Mul(wts, np.float32(route_scale)), g.Cast(ids, to=INT32)


def moe_gate(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, n_group: int = 8,
             topk_group: int = 4, topk: int = 8, route_scale: float = 2.5,
             score_func: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor]:
    t, e = x.shape[0], weight.shape[0]

    def build():
        g = Graph("moe_gate")
        xf = to_float(g, g.input("x", elem_of(x), x.shape), elem_of(x))
        wf = to_float(g, g.input("weight", elem_of(weight), weight.shape), elem_of(weight))
        bf = to_float(g, g.input("bias", elem_of(bias), bias.shape), elem_of(bias)) if bias is not None else None
        w, ids = moe_gate_graph(g, xf, wf, bf, t, e, n_group, topk_group, topk, float(route_scale), score_func)
        g.output(w, "weights", FLOAT, (t, topk))
        g.output(ids, "ids", INT32, (t, topk))
        return compile_graph(g, [("weights", torch.float32, (t, topk)), ("ids", torch.int32, (t, topk))])
    key = ("moe_gate", signature(x, weight, bias), n_group, topk_group, topk, float(route_scale), score_func)
    run = cached(key, build)
    return run(x=x, weight=weight, bias=bias) if bias is not None else run(x=x, weight=weight)


def moe_experts_graph(g: Graph, x: str, ids: str, weights: str, w1: str, w3: str, w2: str, e: int) -> str:
    """fp32 y [T, D]."""
    idx = g.Unsqueeze(g.Cast(ids, to=INT64), g.i64(2))                                           # [T, K, 1]
    hit = g.Equal(idx, g.const(np.arange(e, dtype=np.int64)[None, None, :], np.int64))            # [T, K, E]; -1 hits none
    wk = g.Where(hit, g.Unsqueeze(weights, g.i64(2)), np.float32(0))                              # -1 slots never read
    route = g.Transpose(g.ReduceSum(wk, g.i64(1), keepdims=0), perm=[1, 0])                       # [E, T]
    picked = g.Transpose(g.ReduceMax(g.Cast(hit, to=FLOAT), g.i64(1), keepdims=0), perm=[1, 0])   # [E, T] 1 where routed
    on = g.Unsqueeze(g.Greater(picked, np.float32(0)), g.i64(2))                                  # [E, T, 1]
    xe = g.Unsqueeze(x, g.i64(0))                                                                 # [1, T, D]
    h1 = g.MatMul(xe, g.Transpose(w1, perm=[0, 2, 1]))                                           # [E, T, I]
    h3 = g.MatMul(xe, g.Transpose(w3, perm=[0, 2, 1]))
    act = g.Mul(g.Mul(h1, g.Sigmoid(h1)), h3)                                                     # silu(h1) * h3 in fp32
    act = g.Where(on, g.Mul(act, g.Unsqueeze(route, g.i64(2))), np.float32(0))
    out = g.Where(on, g.MatMul(act, g.Transpose(w2, perm=[0, 2, 1])), np.float32(0))              # [E, T, D]
    return g.ReduceSum(out, g.i64(0), keepdims=0)


def moe_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w1: torch.Tensor, w3: torch.Tensor,
                w2: torch.Tensor) -> torch.Tensor:
    t, d = x.shape
    e, ex = w1.shape[0], elem_of(x)

    def build():
        g = Graph("moe_experts")
        f = [to_float(g, g.input(n, elem_of(v), v.shape), elem_of(v)) for n, v in (("x", x), ("weights", weights),
                                                                                 ("w1", w1), ("w3", w3), ("w2", w2))]
        y = moe_experts_graph(g, f[0], g.input("ids", INT32, ids.shape), f[1], f[2], f[3], f[4], e)
        g.output(y if ex == FLOAT else g.Cast(y, to=ex), "y", ex, (t, d))
        return compile_graph(g, [("y", x.dtype, (t, d))])
    run = cached(("moe_experts", signature(x, ids, weights, w1, w3, w2)), build)
    return run(x=x, ids=ids.int(), weights=weights, w1=w1, w3=w3, w2=w2)[0]


def grouped_contiguous_graph(g: Graph, a: str, b: str, m_idx: str, m: int, n: int, k: int) -> str:
    tiles = m // ALIGN
    grp = g.Reshape(g.Cast(m_idx, to=INT64), g.i64(tiles, ALIGN), allowzero=1)
    tile_group = g.ReduceMax(grp, g.i64(1), keepdims=0)            # one group per tile; -1 rows are below any group
    bt = g.Gather(b, g.Where(g.Less(tile_group, np.int64(0)), np.int64(0), tile_group), axis=0)   # [tiles, N, K]
    at = g.Reshape(a, g.i64(tiles, ALIGN, k), allowzero=1)
    c = g.Reshape(g.MatMul(at, g.Transpose(bt, perm=[0, 2, 1])), g.i64(m, n), allowzero=1)
    return g.Where(g.Unsqueeze(g.GreaterOrEqual(g.Cast(m_idx, to=INT64), np.int64(0)), g.i64(1)), c, np.float32(0))


def moe_grouped_gemm_contiguous(a: torch.Tensor, b: torch.Tensor, m_indices: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n, ea = b.shape[1], elem_of(a)

    def build():
        g = Graph("moe_grouped_gemm_contiguous")
        af = to_float(g, g.input("a", ea, a.shape), ea)
        bf = to_float(g, g.input("b", elem_of(b), b.shape), elem_of(b))
        if b.shape[0] == 0 or m == 0:
            c = g.const(np.zeros((m, n), np.float32))
        else:
            c = grouped_contiguous_graph(g, af, bf, g.input("m_indices", INT32, (m,)), m, n, k)
        g.output(c if ea == FLOAT else g.Cast(c, to=ea), "c", ea, (m, n))
        return compile_graph(g, [("c", a.dtype, (m, n))])
    run = cached(("moe_grouped_gemm_contiguous", signature(a, b, m_indices)), build)
    return run(a=a, b=b)[0] if b.shape[0] == 0 or m == 0 else run(a=a, b=b, m_indices=m_indices.int())[0]


def moe_grouped_gemm_masked(a: torch.Tensor, b: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    gr, mm, _ = a.shape
    n, ea = b.shape[1], elem_of(a)

    def build():
        g = Graph("moe_grouped_gemm_masked")
        af = to_float(g, g.input("a", ea, a.shape), ea)
        bf = to_float(g, g.input("b", elem_of(b), b.shape), elem_of(b))
        cnt = g.Cast(g.input("masked_m", INT32, (gr,)), to=INT64)
        rows = g.Less(g.const(np.arange(mm, dtype=np.int64)[None, :], np.int64), g.Unsqueeze(cnt, g.i64(1)))   # [G, MM]
        c = g.Where(g.Unsqueeze(rows, g.i64(2)), g.MatMul(af, g.Transpose(bf, perm=[0, 2, 1])), np.float32(0))
        g.output(c if ea == FLOAT else g.Cast(c, to=ea), "c", ea, (gr, mm, n))
        return compile_graph(g, [("c", a.dtype, (gr, mm, n))])
    return cached(("moe_grouped_gemm_masked", signature(a, b, masked_m)), build)(a=a, b=b, masked_m=masked_m.int())[0]
