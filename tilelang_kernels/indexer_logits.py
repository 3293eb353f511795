"""indexer_logits: the lightning indexer's scores, DSA stage 1 (SPEC section 4).

I[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s]) for s in
[ks[t], ke[t]), -inf elsewhere. One program takes one query token and BN keys:
a (BN x D) . (D x H) GEMM gives every head's score for those keys at once
(DeepSeek's fp8_index and DeepGEMM's fp8_mqa_logits shape the same product),
then relu, the per-head weight, a reduction over heads, and the key scale.

q and k are both bf16, or both fp8 of one format with k_scale (q's scale is
folded into weights by the caller). The GPU form multiplies the staged
bf16/fp8 tiles on tensor cores; the CPU form decodes the same tiles exactly
to fp32 first (no bf16/fp8 C types). bf16 x bf16 and fp8 x fp8 products are
exact in fp32 either way.
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects
from typing import Any

from .target import Profile

OPS = ("indexer_logits",)
BN = 64  # keys per program


def program(p: Profile, H: int, D: int, dtype: str = "bfloat16", stages: int = 2) -> Any:
    """``dtype``: "bfloat16", or an fp8 format name ("e4m3fn", "e4m3fnuz")."""
    T = p.T
    TQ, S = T.dynamic("TQ"), T.dynamic("S")
    fp8 = dtype != "bfloat16"
    io = p.fp8(dtype) if fp8 else p.bf16()

    def decode(v):
        return p.load_fp8(v, dtype) if fp8 else p.load_bf16(v)

    @T.macro
    def scores(t, n, Q, K, W, KS, KE, KSC, O):
        q_s = p.stage((H, D), io)
        k_s = p.stage((BN, D), io)
        acc = p.tile((BN, H), "float32")
        tot = p.tile((BN,), "float32")
        T.copy(Q[t, 0, 0], q_s)
        T.copy(K[n * BN, 0], k_s)
        if p.gpu:
            T.gemm(k_s, q_s, acc, transpose_B=True, clear_accum=True)
        else:
            q_f = p.tile((H, D), "float32")
            k_f = p.tile((BN, D), "float32")
            for h, d in p.loop(H, D):
                q_f[h, d] = decode(q_s[h, d])
            for i, d in p.loop(BN, D):
                k_f[i, d] = decode(k_s[i, d])
            T.gemm(k_f, q_f, acc, transpose_B=True, clear_accum=True)
        for i, h in p.loop(BN, H):
            # relu as a select that keeps NaN (max(NaN, 0) is 0 on some targets): bad inputs show, not vanish
            acc[i, h] = T.if_then_else(acc[i, h] < T.float32(0), T.float32(0), acc[i, h]) * W[t, h]
        T.reduce_sum(acc, tot, dim=1)
        for i in p.loop(BN):
            if n * BN + i < S:
                O[t, n * BN + i] = T.if_then_else(
                    T.And(KS[t] <= n * BN + i, n * BN + i < KE[t]),
                    tot[i] * (KSC[n * BN + i] if fp8 else T.float32(1)), -T.infinity("float32"))

    if fp8:
        @T.prim_func
        def indexer_logits_fp8(Q: T.Tensor((TQ, H, D), io), K: T.Tensor((S, D), io), W: T.Tensor((TQ, H), "float32"),
                               KS: T.Tensor((TQ,), "int32"), KE: T.Tensor((TQ,), "int32"),
                               KSC: T.Tensor((S,), "float32"), O: T.Tensor((TQ, S), "float32")):
            with p.kernel(T.ceildiv(S, BN), TQ, threads=128) as (n, t):
                scores(t, n, Q, K, W, KS, KE, KSC, O)

        return indexer_logits_fp8

    @T.prim_func
    def indexer_logits(Q: T.Tensor((TQ, H, D), io), K: T.Tensor((S, D), io), W: T.Tensor((TQ, H), "float32"),
                       KS: T.Tensor((TQ,), "int32"), KE: T.Tensor((TQ,), "int32"), O: T.Tensor((TQ, S), "float32")):
        with p.kernel(T.ceildiv(S, BN), TQ, threads=128) as (n, t):
            scores(t, n, Q, K, W, KS, KE, None, O)

    return indexer_logits


def build_configs(fp8: str) -> list[dict[str, Any]]:
    """V3.2's indexer: 64 heads of 128 dims, in the target's FP8 format (the serving path) and bf16."""
    return [dict(H=64, D=128, dtype=fp8), dict(H=64, D=128, dtype="bfloat16")]
