"""sparse_mla_prefill: attention over top-k selected latent rows, DSA stage 3 (SPEC section 6).

FlashMLA's ``flash_mla_sparse_fwd`` contract: one shared KV head of DQK =
d_v + rope dims (512 + 64 in V3.2); the first d_v dims of a row are also its
value. One program takes one query token and a block of HB heads, and walks
that token's k indices BI = 64 at a time: gather the BI rows (an invalid index,
-1 or >= S, gathers zeros and is masked to -inf), score them with two GEMMs
(the d_v part and the rope tail, kept in separate tiles so each is a whole
tensor-core operand), then an online softmax (running max, rescaled sum and
output) and a third GEMM of the probabilities with the gathered values.

As on the GPU, the probabilities enter the value GEMM rounded to bf16 while
their fp32 values feed the running sum, and the CPU form reproduces that
rounding explicitly (round_bf16). A row with no valid index ends with sum 0:
out = 0, lse = max_logits = -inf, never NaN. A NaN score among the valid
entries (NaN in q or in a named kv row) makes out, lse and max_logits of that
row NaN, as in the reference (SPEC §10): the running max carries it, and only
an exactly zero sum is taken for an empty row.
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects
from typing import Any

from .target import Profile

OPS = ("sparse_mla_prefill",)
BI = 64  # indices per step: topk must be a multiple of it


def program(p: Profile, H: int, DQK: int, DV: int, K: int, sm_scale: float, stages: int = 2) -> Any:
    T = p.T
    TQ, S = T.dynamic("TQ"), T.dynamic("S")
    HB = min(H, 64)  # 64 heads fill one wgmma M tile
    DT = DQK - DV
    bf = p.bf16()
    neg_inf = -T.infinity("float32")

    @T.prim_func
    def sparse_mla_prefill(Q: T.Tensor((TQ, H, DQK), bf), KV: T.Tensor((S, 1, DQK), bf),
                           IDX: T.Tensor((TQ, 1, K), "int32"), O: T.Tensor((TQ, H, DV), bf),
                           LSE: T.Tensor((TQ, H), "float32"), MAXL: T.Tensor((TQ, H), "float32")):
        with p.kernel(H // HB, TQ, threads=256) as (hb, t):
            q_s = p.stage((HB, DV), bf)
            qt_s = p.stage((HB, DT), bf)
            kv_s = p.stage((BI, DV), bf)
            kt_s = p.stage((BI, DT), bf)
            ok = p.stage((BI,), "int32")
            sc = p.tile((HB, BI), "float32")
            acc = p.tile((HB, DV), "float32")
            m = p.tile((HB,), "float32")
            m_prev = p.tile((HB,), "float32")
            rmax = p.tile((HB,), "float32")
            rsum = p.tile((HB,), "float32")
            nan_sc = p.tile((HB, BI), "float32")
            nans = p.tile((HB,), "float32")
            lsum = p.tile((HB,), "float32")
            alpha = p.tile((HB,), "float32")
            T.copy(Q[t, hb * HB, 0], q_s)
            T.copy(Q[t, hb * HB, DV], qt_s)
            T.clear(acc)
            T.clear(lsum)
            T.fill(m, neg_inf)
            if not p.gpu:  # the CPU GEMM takes fp32 operands: decode once per tile
                q_f = p.tile((HB, DV), "float32")
                qt_f = p.tile((HB, DT), "float32")
                kv_f = p.tile((BI, DV), "float32")
                kt_f = p.tile((BI, DT), "float32")
                p_f = p.tile((HB, BI), "float32")
                for h, d in p.loop(HB, DV):
                    q_f[h, d] = p.load_bf16(q_s[h, d])
                for h, d in p.loop(HB, DT):
                    qt_f[h, d] = p.load_bf16(qt_s[h, d])
            else:
                p_s = p.stage((HB, BI), bf)
            for ib in T.Pipelined(K // BI, num_stages=stages if p.gpu else 1):
                for i in p.loop(BI):
                    ok[i] = T.if_then_else(T.And(IDX[t, 0, ib * BI + i] >= 0, IDX[t, 0, ib * BI + i] < S), 1, 0)
                for i, d in p.loop(BI, DV):
                    kv_s[i, d] = T.if_then_else(ok[i] == 1, KV[IDX[t, 0, ib * BI + i], 0, d], T.Cast(bf, 0))
                for i, d in p.loop(BI, DT):
                    kt_s[i, d] = T.if_then_else(ok[i] == 1, KV[IDX[t, 0, ib * BI + i], 0, DV + d], T.Cast(bf, 0))
                if p.gpu:
                    T.gemm(q_s, kv_s, sc, transpose_B=True, clear_accum=True)
                    T.gemm(qt_s, kt_s, sc, transpose_B=True)
                else:
                    for i, d in p.loop(BI, DV):
                        kv_f[i, d] = p.load_bf16(kv_s[i, d])
                    for i, d in p.loop(BI, DT):
                        kt_f[i, d] = p.load_bf16(kt_s[i, d])
                    T.gemm(q_f, kv_f, sc, transpose_B=True, clear_accum=True)
                    T.gemm(qt_f, kt_f, sc, transpose_B=True)
                for h, i in p.loop(HB, BI):
                    sc[h, i] = T.if_then_else(ok[i] == 1, sc[h, i] * T.float32(sm_scale), neg_inf)
                T.copy(m, m_prev)
                T.reduce_max(sc, rmax, dim=1)
                # A max reduction may drop NaN (fmaxf on a GPU, a > b ? a : b in C): a row whose valid scores
                # were all NaN would keep m = -inf and be zeroed as empty. The NaN-only sum (0 or NaN) puts
                # it back, and a NaN m_prev stays NaN (T.max(NaN, x) may return x).
                for h, i in p.loop(HB, BI):
                    nan_sc[h, i] = T.if_then_else(T.isnan(sc[h, i]), sc[h, i], T.float32(0))
                T.reduce_sum(nan_sc, nans, dim=1)
                for h in p.loop(HB):
                    m[h] = T.if_then_else(T.isnan(m_prev[h]), m_prev[h], T.max(m_prev[h], rmax[h]) + nans[h])
                    # while nothing valid was seen m is -inf: rescale by 0, never exp(-inf - -inf)
                    alpha[h] = T.if_then_else(m[h] == neg_inf, T.float32(0), T.exp(m_prev[h] - m[h]))
                for h, i in p.loop(HB, BI):
                    sc[h, i] = T.if_then_else(m[h] == neg_inf, T.float32(0), T.exp(sc[h, i] - m[h]))
                T.reduce_sum(sc, rsum, dim=1)
                for h in p.loop(HB):
                    lsum[h] = lsum[h] * alpha[h] + rsum[h]
                for h, d in p.loop(HB, DV):
                    acc[h, d] = acc[h, d] * alpha[h]
                if p.gpu:
                    T.copy(sc, p_s)
                    T.gemm(p_s, kv_s, acc)
                else:
                    for h, i in p.loop(HB, BI):
                        p_f[h, i] = p.round_bf16(sc[h, i])
                    T.gemm(p_f, kv_f, acc)
            # only an exactly zero sum is an empty row: `lsum > 0` is false for NaN and would write 0 / -inf
            for h, d in p.loop(HB, DV):
                O[t, hb * HB + h, d] = p.store_bf16(T.if_then_else(lsum[h] == T.float32(0), T.float32(0), acc[h, d] / lsum[h]))
            for h in p.loop(HB):
                LSE[t, hb * HB + h] = T.if_then_else(lsum[h] == T.float32(0), neg_inf, m[h] + T.log(lsum[h]))
                MAXL[t, hb * HB + h] = m[h]

    return sparse_mla_prefill


def build_configs(fp8: str) -> list[dict[str, Any]]:  # bf16 operands: the same on every target
    """V3.2: 128 heads (64 per rank at TP 2), DQK 576, d_v 512, topk 2048."""
    return [dict(H=64, DQK=576, DV=512, K=2048, sm_scale=0.1352338)]
