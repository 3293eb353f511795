"""DSA and MLA as ONNX graphs: indexer logits, top-k selection, sparse and dense MLA prefill.

Masking follows SPEC §10 with selections, never products: an invalid index
(-1, >= S, outside [ks, ke)) is clamped to a safe row for the Gather, then
the gathered row is replaced by zeros with ``Where`` before any MatMul and its
score by -inf, so whatever the slot behind it holds (NaN included) cannot
reach the result ("0 * NaN" never happens)."""
from __future__ import annotations

import numpy as np
import torch

from .runtime import DOUBLE, FLOAT, INT32, INT64, Graph, cached, compile_graph, elem_of, signature, to_float

NEG_INF = np.float32(-np.inf)


def window_mask(g: Graph, ks: str, ke: str, s: int) -> str:
    """bool [T, S]: ks[t] <= s < ke[t]."""
    pos = g.const(np.arange(s, dtype=np.int32)[None, :], np.int32)
    return g.And(g.GreaterOrEqual(pos, g.Unsqueeze(ks, g.i64(1))), g.Less(pos, g.Unsqueeze(ke, g.i64(1))))


def nan_aware_max(g: Graph, x: str) -> str:
    """ReduceMax over the last axis (keepdims) that is NaN where the row holds a NaN: ONNX leaves NaN
    propagation of ReduceMax unspecified, and a NaN query must give NaN in its row (SPEC §10)."""
    m = g.ReduceMax(x, g.i64(-1), keepdims=1)
    has_nan = g.ReduceMax(g.Cast(g.IsNaN(x), to=FLOAT), g.i64(-1), keepdims=1)
    return g.Where(g.Greater(has_nan, np.float32(0)), np.float32(np.nan), m)


def masked_softmax(g: Graph, sc: str) -> tuple[str, str, str]:
    """(p, lse, max) of fp32 scores with -inf at masked slots (last axis; lse and max keep the axis).
    A row with nothing valid gets p = 0, lse = max = -inf (Softmax alone would give 0/0 = NaN)."""
    m = nan_aware_max(g, sc)
    empty = g.IsInf(m, detect_positive=0)
    m0 = g.Where(empty, np.float32(0), m)
    p = g.Softmax(g.Where(empty, np.float32(0), sc), axis=-1)
    p = g.Where(empty, np.float32(0), p)
    lse = g.Where(empty, NEG_INF, g.Add(m0, g.Log(g.ReduceSum(g.Exp(g.Sub(sc, m0)), g.i64(-1), keepdims=1))))
    return p, lse, m


# -- indexer -------------------------------------------------------------------------------
def indexer_logits_graph(g: Graph, q: str, k: str, w: str, ks: str, ke: str, k_scale: str | None,
                         t: int, h: int, d: int, s: int, q_elem: int, k_elem: int) -> str:
    qf = g.Reshape(to_float(g, q, q_elem), g.i64(t * h, d), allowzero=1)
    dots = g.Reshape(g.MatMul(qf, g.Transpose(to_float(g, k, k_elem), perm=[1, 0])), g.i64(t, h, s), allowzero=1)
    logits = g.ReduceSum(g.Mul(g.Relu(dots), g.Unsqueeze(w, g.i64(2))), g.i64(1), keepdims=0)      # [T, S]
    if k_scale is not None:
        logits = g.Mul(logits, g.Unsqueeze(k_scale, g.i64(0)))
    return g.Where(window_mask(g, ks, ke, s), logits, NEG_INF)


def indexer_logits(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor, ke: torch.Tensor,
                   k_scale: torch.Tensor | None = None) -> torch.Tensor:
    t, h, d = q.shape
    s = k.shape[0]

    def build():
        g = Graph("indexer_logits")
        ksc = g.input("k_scale", FLOAT, (s,)) if k_scale is not None else None
        out = indexer_logits_graph(g, g.input("q", elem_of(q), q.shape), g.input("k", elem_of(k), k.shape),
                                   to_float(g, g.input("weights", elem_of(weights), weights.shape), elem_of(weights)),
                                   g.input("ks", INT32, (t,)), g.input("ke", INT32, (t,)), ksc,
                                   t, h, d, s, elem_of(q), elem_of(k))
        g.output(out, "logits", FLOAT, (t, s))
        return compile_graph(g, [("logits", torch.float32, (t, s))])
    run = cached(("indexer_logits", signature(q, k, weights, ks, ke, k_scale)), build)
    extra = {"k_scale": k_scale.float()} if k_scale is not None else {}
    return run(q=q, k=k, weights=weights, ks=ks.int(), ke=ke.int(), **extra)[0]


# -- top-k ---------------------------------------------------------------------------------
def topk_graph(g: Graph, logits: str, ks: str | None, ke: str | None, t: int, s: int, k: int, elem: int) -> str:
    """int32 [T, k]. ONNX TopK breaks ties by the lower index (its spec: "the element with the lower index
    will appear first"), which is exactly the torch backend's lowest-position-first rule, so decode and
    prefill pick the same keys for the same logits."""
    kk = min(k, s)
    if kk == 0:
        return g.const(np.full((t, k), -1, np.int32), np.int32)
    v = logits
    if ks is not None:
        ft = np.float64 if elem == DOUBLE else np.float32
        lowest, neg = np.asarray(np.finfo(ft).min, ft), np.asarray(-np.inf, ft)
        # an in-window -inf must still outrank the masked slots: it becomes the lowest finite float
        # (only positions leave the op, so the stand-in value never does); Less keeps NaN as it is
        inside = window_mask(g, ks, ke, s)
        v = g.Where(inside, g.Where(g.Less(v, lowest), lowest, v), neg)
    _, idx = g.TopK(v, g.i64(kk), axis=-1, largest=1, sorted=1, n_out=2)                       # int64 [T, kk]
    if ks is not None:
        ok = g.And(g.GreaterOrEqual(idx, g.Unsqueeze(g.Cast(ks, to=INT64), g.i64(1))),
                   g.Less(idx, g.Unsqueeze(g.Cast(ke, to=INT64), g.i64(1))))
        idx = g.Where(ok, idx, np.int64(-1))
    out = g.Cast(idx, to=INT32)
    if kk < k:
        out = g.Concat(out, g.const(np.full((t, k - kk), -1, np.int32), np.int32), axis=1)
    return out



def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None,
                ke: torch.Tensor | None = None) -> torch.Tensor:
    t, s = logits.shape
    windowed = ks is not None

    def build():
        g = Graph("topk_select")
        e = elem_of(logits)
        lg = g.input("logits", e, (t, s))
        kst, ket = (g.input("ks", INT32, (t,)), g.input("ke", INT32, (t,))) if windowed else (None, None)
        g.output(topk_graph(g, lg, kst, ket, t, s, int(k), e), "indices", INT32, (t, k))
        return compile_graph(g, [("indices", torch.int32, (t, int(k)))])
    run = cached(("topk_select", signature(logits, ks, ke), int(k)), build)
    return run(logits=logits, ks=ks.int(), ke=ke.int())[0] if windowed else run(logits=logits)[0]


# -- sparse MLA ----------------------------------------------------------------------------
def attend_rows(g: Graph, q: str, rows: str, valid: str, sm_scale: float, d_v: int) -> tuple[str, str, str]:
    """Softmax attention of q [n, H, D] over gathered rows [n, k, D] (valid bool [n, k]): (out, lse, max)."""
    rows = g.Where(g.Unsqueeze(valid, g.i64(2)), rows, np.float32(0))                            # masked rows never enter
    sc = g.MatMul(g.Mul(q, np.float32(sm_scale)), g.Transpose(rows, perm=[0, 2, 1]))              # [n, H, k]
    sc = g.Where(g.Unsqueeze(valid, g.i64(1)), sc, NEG_INF)
    p, lse, m = masked_softmax(g, sc)
    out = g.MatMul(p, g.Slice(rows, g.i64(0), g.i64(d_v), g.i64(2)))
    return out, g.Squeeze(lse, g.i64(2)), g.Squeeze(m, g.i64(2))


def gather_valid(g: Graph, table: str, indices: str, rows_n: int, k: int, n: int) -> tuple[str, str]:
    """(rows [n, k, W] gathered with invalid indices clamped to 0, valid bool [n, k])."""
    idx = g.Cast(g.Reshape(indices, g.i64(n, k), allowzero=1), to=INT64)
    valid = g.And(g.GreaterOrEqual(idx, np.int64(0)), g.Less(idx, np.int64(rows_n)))
    return g.Gather(table, g.Where(valid, idx, np.int64(0)), axis=0), valid


def sparse_mla_graph(g: Graph, q: str, kv: str, indices: str, sm_scale: float, d_v: int,
                     t: int, h: int, d: int, s: int, k: int, q_elem: int, kv_elem: int) -> tuple[str, str, str]:
    """(out fp32 [T, H, d_v], lse [T, H], max_logits [T, H])."""
    if s == 0 or k == 0:  # nothing can be valid: the spec's empty-row result, no Gather from an empty table
        return (g.const(np.zeros((t, h, d_v), np.float32)), g.const(np.full((t, h), -np.inf, np.float32)),
                g.const(np.full((t, h), -np.inf, np.float32)))
    rows, valid = gather_valid(g, g.Reshape(to_float(g, kv, kv_elem), g.i64(s, d), allowzero=1), indices, s, k, t)
    return attend_rows(g, to_float(g, q, q_elem), rows, valid, sm_scale, d_v)


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, h, d = q.shape
    s, k = kv.shape[0], indices.shape[-1]
    e = elem_of(q)

    def build():
        g = Graph("sparse_mla_prefill")
        out, lse, m = sparse_mla_graph(g, g.input("q", e, q.shape), g.input("kv", elem_of(kv), kv.shape),
                                       g.input("indices", INT32, indices.shape), float(sm_scale), int(d_v),
                                       t, h, d, s, k, e, elem_of(kv))
        g.output(out if e == FLOAT else g.Cast(out, to=e), "out", e, (t, h, d_v))
        g.output(lse, "lse", FLOAT, (t, h))
        g.output(m, "max_logits", FLOAT, (t, h))
        return compile_graph(g, [("out", q.dtype, (t, h, d_v)), ("lse", torch.float32, (t, h)),
                                 ("max_logits", torch.float32, (t, h))])
    return cached(("sparse_mla_prefill", signature(q, kv, indices), float(sm_scale), int(d_v)), build)(q=q, kv=kv, indices=indices)


# -- dense MLA -----------------------------------------------------------------------------
def mla_dense_graph(g: Graph, q: str, k: str, v: str, sm_scale: float, t: int, s: int,
                    q_elem: int, k_elem: int, v_elem: int) -> tuple[str, str]:
    """(out fp32 [T, H, DV], lse [T, H]); query t sits at position S - T + t."""
    qh = g.Transpose(g.Mul(to_float(g, q, q_elem), np.float32(sm_scale)), perm=[1, 0, 2])        # [H, T, D]
    kh = g.Transpose(to_float(g, k, k_elem), perm=[1, 2, 0])                                     # [H, D, S]
    sc = g.MatMul(qh, kh)                                                                        # [H, T, S]
    seen = g.LessOrEqual(g.const(np.arange(s, dtype=np.int64)[None, :], np.int64),
                         g.const((s - t + np.arange(t, dtype=np.int64))[:, None], np.int64))     # [T, S] causal
    sc = g.Where(seen, sc, NEG_INF)
    p, lse, _ = masked_softmax(g, sc)
    out = g.MatMul(p, g.Transpose(to_float(g, v, v_elem), perm=[1, 0, 2]))                       # [H, T, DV]
    return g.Transpose(out, perm=[1, 0, 2]), g.Transpose(g.Squeeze(lse, g.i64(2)), perm=[1, 0])


def mla_prefill_dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    t, h, _ = q.shape
    s, dv = k.shape[0], v.shape[-1]
    e = elem_of(q)

    def build():
        g = Graph("mla_prefill_dense")
        out, lse = mla_dense_graph(g, g.input("q", e, q.shape), g.input("k", elem_of(k), k.shape),
                                   g.input("v", elem_of(v), v.shape), float(sm_scale), t, s, e, elem_of(k), elem_of(v))
        g.output(out if e == FLOAT else g.Cast(out, to=e), "out", e, (t, h, dv))
        g.output(lse, "lse", FLOAT, (t, h))
        return compile_graph(g, [("out", q.dtype, (t, h, dv)), ("lse", torch.float32, (t, h))])
    return cached(("mla_prefill_dense", signature(q, k, v), float(sm_scale)), build)(q=q, k=k, v=v)



def mla_decode_graph(g: Graph, q: str, kv: str, table: str, seqlens: str, sm_scale: float, d_v: int, causal: bool,
                     b: int, sq: int, h: int, d: int, nb: int, bs: int, mb: int, q_elem: int, kv_elem: int) -> tuple[str, str]:
    """(out fp32 [B, SQ, H, d_v], lse [B, H, SQ]) over the pages each sequence's block table names."""
    n = mb * bs
    if b * sq * h == 0 or n == 0 or nb == 0:
        return (g.const(np.zeros((b, sq, h, d_v), np.float32)), g.const(np.full((b, h, sq), -np.inf, np.float32)))
    bt = g.Cast(table, to=INT64)
    live = g.GreaterOrEqual(bt, np.int64(0))                                                     # [B, MB]
    pages = g.Gather(g.Reshape(to_float(g, kv, kv_elem), g.i64(nb, bs, d), allowzero=1), g.Where(live, bt, np.int64(0)), axis=0)
    rows = g.Reshape(pages, g.i64(b, n, d), allowzero=1)                                          # [B, L, D]
    live_rows = g.Reshape(g.Expand(g.Unsqueeze(live, g.i64(2)), g.i64(b, mb, bs)), g.i64(b, n), allowzero=1)
    pos = g.const(np.arange(n, dtype=np.int64)[None, :], np.int64)                                 # [1, L]
    sl = g.Unsqueeze(g.Cast(seqlens, to=INT64), g.i64(1))                                          # [B, 1]
    # rows past cache_seqlens or on unmapped pages may hold anything: zero them before any product
    used = g.And(g.Less(pos, sl), live_rows)                                                       # [B, L]
    rows = g.Where(g.Unsqueeze(used, g.i64(2)), rows, np.float32(0))
    limit = g.Add(sl, g.const((np.arange(sq) - sq + 1)[None, :] if causal else np.zeros((1, sq)), np.int64))   # [B, SQ]
    valid = g.And(g.Less(g.Unsqueeze(pos, g.i64(0)), g.Unsqueeze(limit, g.i64(2))), g.Unsqueeze(used, g.i64(1)))  # [B, SQ, L]
    qf = g.Reshape(g.Mul(to_float(g, q, q_elem), np.float32(sm_scale)), g.i64(b, sq * h, d), allowzero=1)
    sc = g.Reshape(g.MatMul(qf, g.Transpose(rows, perm=[0, 2, 1])), g.i64(b, sq, h, n), allowzero=1)
    sc = g.Where(g.Unsqueeze(valid, g.i64(2)), sc, NEG_INF)
    p, lse, _ = masked_softmax(g, sc)
    out = g.MatMul(g.Reshape(p, g.i64(b, sq * h, n), allowzero=1), g.Slice(rows, g.i64(0), g.i64(d_v), g.i64(2)))
    out = g.Reshape(out, g.i64(b, sq, h, d_v), allowzero=1)
    return out, g.Transpose(g.Squeeze(lse, g.i64(3)), perm=[0, 2, 1])


def mla_decode_dense(q: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor, cache_seqlens: torch.Tensor,
                     sm_scale: float, d_v: int = 512, causal: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    b, sq, h, d = q.shape
    nb, bs = kv_cache.shape[:2]
    mb = block_table.shape[1]
    e = elem_of(q)

    def build():
        g = Graph("mla_decode_dense")
        out, lse = mla_decode_graph(g, g.input("q", e, q.shape), g.input("kv_cache", elem_of(kv_cache), kv_cache.shape),
                                    g.input("block_table", INT32, block_table.shape), g.input("cache_seqlens", INT32, (b,)),
                                    float(sm_scale), int(d_v), bool(causal), b, sq, h, d, nb, bs, mb, e, elem_of(kv_cache))
        g.output(out if e == FLOAT else g.Cast(out, to=e), "out", e, (b, sq, h, d_v))
        g.output(lse, "lse", FLOAT, (b, h, sq))
        return compile_graph(g, [("out", q.dtype, (b, sq, h, int(d_v))), ("lse", torch.float32, (b, h, sq))])
    key = ("mla_decode_dense", signature(q, kv_cache, block_table, cache_seqlens), float(sm_scale), int(d_v), bool(causal))
    return cached(key, build)(q=q, kv_cache=kv_cache, block_table=block_table.int(), cache_seqlens=cache_seqlens.int())


# -- the paged FP8 indexer key cache (per block: BS x 128 FP8 bytes, then BS fp32 scales) ------------
KEY_DIM = 128


def index_cache_split(g: Graph, cache: str, nb: int, bs: int, fmt) -> tuple[str, str]:
    """(k float32 [NB, BS, 128], k_scale float32 [NB, BS]) decoded from the cache bytes."""
    from .bytes import f32_from_bytes, fp8_from_bytes

    flat = g.Reshape(cache, g.i64(nb, bs * (KEY_DIM + 4)), allowzero=1)
    data = g.Slice(flat, g.i64(0), g.i64(bs * KEY_DIM), g.i64(1))
    sbytes = g.Slice(flat, g.i64(bs * KEY_DIM), g.i64(bs * (KEY_DIM + 4)), g.i64(1))
    k = fp8_from_bytes(g, g.Reshape(data, g.i64(nb, bs, KEY_DIM), allowzero=1), fmt)
    return k, f32_from_bytes(g, g.Reshape(sbytes, g.i64(nb, bs, 4), allowzero=1))


def index_cache_unpack(cache: torch.Tensor, fmt="e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    from ...core.fp8 import fp8_format

    f = fp8_format(fmt, "index_cache_unpack")
    nb, bs, _ = cache.shape

    def build():
        g = Graph("index_cache_unpack")
        k, s = index_cache_split(g, g.input("cache", elem_of(cache), cache.shape), nb, bs, f)
        g.output(g.Cast(k, to=elem_of(f.dtype), saturate=1), "k", elem_of(f.dtype), (nb, bs, KEY_DIM))
        g.output(s, "k_scale", FLOAT, (nb, bs))
        return compile_graph(g, [("k", f.dtype, (nb, bs, KEY_DIM)), ("k_scale", torch.float32, (nb, bs))])
    return cached(("index_cache_unpack", signature(cache), f.name), build)(cache=cache)


def indexer_logits_paged(q: torch.Tensor, k_cache: torch.Tensor, weights: torch.Tensor, block_table: torch.Tensor,
                         seqlens: torch.Tensor) -> torch.Tensor:
    from ...core.fp8 import fp8_format

    b, h, d = q.shape
    nb, bs, _ = k_cache.shape
    mb = block_table.shape[1]
    n = mb * bs
    f = fp8_format(q.dtype, "indexer_logits_paged", "q")

    def build():
        g = Graph("indexer_logits_paged")
        cache = g.input("k_cache", elem_of(k_cache), k_cache.shape)
        qf = to_float(g, g.input("q", elem_of(q), q.shape), elem_of(q))
        w = to_float(g, g.input("weights", elem_of(weights), weights.shape), elem_of(weights))
        bt = g.Cast(g.input("block_table", INT32, block_table.shape), to=INT64)
        sl = g.Unsqueeze(g.Cast(g.input("seqlens", INT32, (b,)), to=INT64), g.i64(1))
        if b == 0 or n == 0 or nb == 0:
            out = g.const(np.full((b, n), -np.inf, np.float32))
        else:
            k, ks = index_cache_split(g, cache, nb, bs, f)
            live = g.GreaterOrEqual(bt, np.int64(0))
            page = g.Where(live, bt, np.int64(0))
            rows = g.Reshape(g.Gather(k, page, axis=0), g.i64(b, n, d), allowzero=1)          # [B, L, 128]
            scale = g.Reshape(g.Gather(ks, page, axis=0), g.i64(b, n), allowzero=1)            # [B, L]
            live_rows = g.Reshape(g.Expand(g.Unsqueeze(live, g.i64(2)), g.i64(b, mb, bs)), g.i64(b, n), allowzero=1)
            used = g.And(g.Less(g.const(np.arange(n, dtype=np.int64)[None, :], np.int64), sl), live_rows)
            # positions past seqlens and unmapped pages may hold any bytes (NaN scales too): selected away first
            rows = g.Where(g.Unsqueeze(used, g.i64(2)), rows, np.float32(0))
            scale = g.Where(used, scale, np.float32(0))
            dots = g.MatMul(qf, g.Transpose(rows, perm=[0, 2, 1]))                              # [B, H, L]
            logits = g.ReduceSum(g.Mul(g.Relu(dots), g.Unsqueeze(w, g.i64(2))), g.i64(1), keepdims=0)
            out = g.Where(used, g.Mul(logits, scale), NEG_INF)
        g.output(out, "logits", FLOAT, (b, n))
        return compile_graph(g, [("logits", torch.float32, (b, n))])
    run = cached(("indexer_logits_paged", signature(q, k_cache, weights, block_table, seqlens)), build)
    return run(q=q, k_cache=k_cache, weights=weights, block_table=block_table.int(), seqlens=seqlens.int())[0]


# -- the 656-byte FP8 MLA latent cache: 512 FP8 bytes (four 128-tiles), 4 fp32 tile scales, 64 bf16 rope values --
LATENT, ROPE, TILE = 512, 64, 128
SCALES_AT, ROPE_AT, MLA_WIDTH = LATENT, LATENT + 4 * (LATENT // TILE), LATENT + 4 * (LATENT // TILE) + 2 * ROPE


def mla_rows_from_bytes(g: Graph, rows: str, lead: tuple[int, ...], fmt) -> str:
    """uint8 [*lead, 656] -> float32 [*lead, 576], exactly (table Gather for FP8, integer arithmetic for fp32/bf16)."""
    from .bytes import f32_from_bytes, fp8_from_bytes

    ax = len(lead)
    lat = fp8_from_bytes(g, g.Slice(rows, g.i64(0), g.i64(SCALES_AT), g.i64(ax)), fmt)
    sb = g.Reshape(g.Slice(rows, g.i64(SCALES_AT), g.i64(ROPE_AT), g.i64(ax)), g.i64(*lead, LATENT // TILE, 4), allowzero=1)
    s = f32_from_bytes(g, sb)                                                                     # [*lead, 4]
    lat = g.Reshape(g.Mul(g.Reshape(lat, g.i64(*lead, LATENT // TILE, TILE), allowzero=1), g.Unsqueeze(s, g.i64(ax + 1))),
                    g.i64(*lead, LATENT), allowzero=1)
    # a bf16 is the upper half of an fp32: two zero bytes below it make the fp32 whose value it is
    rb = g.Reshape(g.Slice(rows, g.i64(ROPE_AT), g.i64(MLA_WIDTH), g.i64(ax)), g.i64(*lead, ROPE, 2), allowzero=1)
    zeros = g.const(np.zeros((*lead, ROPE, 2), np.uint8), np.uint8)
    rope = f32_from_bytes(g, g.Concat(zeros, rb, axis=-1))
    return g.Concat(lat, rope, axis=-1)


def mla_cache_unpack(cache: torch.Tensor, fmt="e4m3fn") -> torch.Tensor:
    from ...core.fp8 import fp8_format

    f = fp8_format(fmt, "mla_cache_unpack")
    lead = tuple(cache.shape[:-1])

    def build():
        g = Graph("mla_cache_unpack")
        out = mla_rows_from_bytes(g, g.input("cache", elem_of(cache), cache.shape), lead, f)
        g.output(out, "kv", FLOAT, (*lead, LATENT + ROPE))
        return compile_graph(g, [("kv", torch.float32, (*lead, LATENT + ROPE))])
    return cached(("mla_cache_unpack", signature(cache), f.name), build)(cache=cache)[0]


def sparse_mla_decode(q: torch.Tensor, kv_cache: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                      d_v: int = 512, fmt="e4m3fn") -> tuple[torch.Tensor, torch.Tensor]:
    from ...core.fp8 import fp8_format

    b, sq, h, d = q.shape
    nb, bs, _, w = kv_cache.shape
    k, n, e = indices.shape[-1], b * sq, elem_of(q)
    fp8 = kv_cache.dtype == torch.uint8 and w == MLA_WIDTH
    f = fp8_format(fmt, "sparse_mla_decode")

    def build():
        g = Graph("sparse_mla_decode")
        qv, cache = g.input("q", e, q.shape), g.input("kv_cache", elem_of(kv_cache), kv_cache.shape)
        idx = g.input("indices", INT32, indices.shape)
        if n == 0 or k == 0 or nb * bs == 0:
            out, lse = g.const(np.zeros((n, h, d_v), np.float32)), g.const(np.full((n, h), -np.inf, np.float32))
        else:
            pool = g.Reshape(cache, g.i64(nb * bs, w), allowzero=1)
            rows, valid = gather_valid(g, pool if fp8 else to_float(g, pool, elem_of(kv_cache)), idx, nb * bs, k, n)
            if fp8:  # gather first, then decode only the named rows
                rows = mla_rows_from_bytes(g, rows, (n, k), f)
            qf = g.Reshape(to_float(g, qv, e), g.i64(n, h, d), allowzero=1)
            out, lse, _ = attend_rows(g, qf, rows, valid, sm_scale, d_v)
        out = g.Reshape(out, g.i64(b, sq, h, d_v), allowzero=1)
        g.output(out if e == FLOAT else g.Cast(out, to=e), "out", e, (b, sq, h, d_v))
        g.output(g.Transpose(g.Reshape(lse, g.i64(b, sq, h), allowzero=1), perm=[0, 2, 1]), "lse", FLOAT, (b, h, sq))
        return compile_graph(g, [("out", q.dtype, (b, sq, h, int(d_v))), ("lse", torch.float32, (b, h, sq))])
    key = ("sparse_mla_decode", signature(q, kv_cache, indices), float(sm_scale), int(d_v), f.name)
    return cached(key, build)(q=q, kv_cache=kv_cache, indices=indices.int())


def _quantized_codes(g: Graph, groups: str, f) -> tuple[str, str]:
    """(uint8 FP8 codes of groups / s, ue8m0 scales s) for float32 groups [..., 128] (one scale per group)."""
    from .bytes import fp8_codes
    from .quant import group_scale
    from ...core.fp8 import UE8M0

    s = group_scale(g, groups, f, UE8M0)
    y = g.Cast(g.Div(groups, g.Unsqueeze(s, g.i64(-1))), to=elem_of(f.dtype), saturate=1)
    return fp8_codes(g, g.Cast(y, to=FLOAT), f), s


def index_cache_pack(k: torch.Tensor, fmt="e4m3fn") -> torch.Tensor:
    from .bytes import f32_bytes
    from ...core.fp8 import fp8_format

    f = fp8_format(fmt, "index_cache_pack")
    nb, bs, d = k.shape

    def build():
        g = Graph("index_cache_pack")
        codes, s = _quantized_codes(g, to_float(g, g.input("k", elem_of(k), k.shape), elem_of(k)), f)
        flat = g.Concat(g.Reshape(codes, g.i64(nb, bs * d), allowzero=1),
                        g.Reshape(f32_bytes(g, s), g.i64(nb, bs * 4), allowzero=1), axis=1)
        g.output(g.Reshape(flat, g.i64(nb, bs, d + 4), allowzero=1), "cache", elem_of(torch.uint8), (nb, bs, d + 4))
        return compile_graph(g, [("cache", torch.uint8, (nb, bs, d + 4))])
    return cached(("index_cache_pack", signature(k), f.name), build)(k=k)[0]


def mla_cache_pack(kv: torch.Tensor, fmt="e4m3fn") -> torch.Tensor:
    from .bytes import bf16_bytes, f32_bytes
    from ...core.fp8 import fp8_format

    f = fp8_format(fmt, "mla_cache_pack")
    n = kv.shape[0]

    def build():
        g = Graph("mla_cache_pack")
        x = to_float(g, g.input("kv", elem_of(kv), kv.shape), elem_of(kv))
        lat = g.Reshape(g.Slice(x, g.i64(0), g.i64(LATENT), g.i64(1)), g.i64(n, LATENT // TILE, TILE), allowzero=1)
        codes, s = _quantized_codes(g, lat, f)                                                    # [N, 4, 128], [N, 4]
        rope = bf16_bytes(g, g.Slice(x, g.i64(LATENT), g.i64(LATENT + ROPE), g.i64(1)))           # [N, 64, 2]
        out = g.Concat(g.Reshape(codes, g.i64(n, LATENT), allowzero=1), g.Reshape(f32_bytes(g, s), g.i64(n, 16), allowzero=1),
                       g.Reshape(rope, g.i64(n, 2 * ROPE), allowzero=1), axis=1)
        g.output(out, "cache", elem_of(torch.uint8), (n, MLA_WIDTH))
        return compile_graph(g, [("cache", torch.uint8, (n, MLA_WIDTH))])
    return cached(("mla_cache_pack", signature(kv), f.name), build)(kv=kv)[0]
