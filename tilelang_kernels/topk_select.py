"""topk_select: the k largest logits of each row within [ks, ke), DSA stage 2 (SPEC section 5).

Radix select instead of a sort: logits become order-preserving uint32 keys
(flip every bit of a negative float, set the sign bit of a positive one), and
four passes of an 8-bit histogram over the keys that still match the chosen
prefix pin down the exact key of the k-th largest element. A last sweep keeps
every key above it and, of the keys equal to it, as many as are still needed:
any tie choice is valid because the result is a set. A row with no more than
k valid entries selects all of them (dense attention) and pads with -1.

One program per row. On a GPU the sweeps over the row are spread over the
block's threads, histogram bins and output slots are claimed with shared
atomics, and the scan over the 256 bins is repeated by every thread from
shared memory (cheaper than a broadcast). The CPU form runs the same sweeps
serially and increments in place. Picks are collected in a staged tile that
starts as -1 and is copied out once, so threads never race on global memory.
Every NaN logit gets the largest key, so NaN ranks above +inf whatever its
sign, the order of torch.sort and of the reference (SPEC §10: a NaN score is
selected and shows downstream, never dropped).
"""
# no `from __future__ import annotations`: TileLang reads the tensor annotations as live objects
from typing import Any

from .target import Profile, as_u32

OPS = ("topk_select",)
CH = 256   # row elements per sweep step (one per thread on a GPU)
OUT_TILE = 64  # output slots are initialized in tiles of 64


def program(p: Profile, K: int) -> Any:
    T = p.T
    TQ, S = T.dynamic("TQ"), T.dynamic("S")

    def key_of(x):
        b = as_u32(T, x)
        # NaN ranks above +inf whatever its sign bit, as in torch.sort (the reference): without the
        # test a NaN with the sign bit set (x86's default NaN, 0xFFC00000) maps below -inf and is
        # never selected. T.isnan, not x != x: the TIR simplifier folds x != x to False.
        return T.if_then_else(T.isnan(x), T.uint32(0xFFFFFFFF), T.if_then_else(
            T.shift_right(b, T.uint32(31)) == T.uint32(1), T.bitwise_not(b), T.bitwise_or(b, T.uint32(0x80000000))))

    @T.macro
    def bump(buf, i, slot):
        # the previous count becomes this element's slot
        if p.gpu:
            slot[0] = T.atomic_add(buf[i], 1, return_prev=True)
        else:
            slot[0] = buf[i]
            buf[i] = buf[i] + 1

    @T.prim_func
    def topk_select(L: T.Tensor((TQ, S), "float32"), KS: T.Tensor((TQ,), "int32"), KE: T.Tensor((TQ,), "int32"),
                    I: T.Tensor((TQ, K), "int32")):
        with p.kernel(TQ, threads=CH) as t:
            picks = p.stage((K,), "int32")
            hist = p.stage((256,), "int32")
            cnt = p.stage((2,), "int32")  # [0]: slots used, [1]: ties taken
            prefix = T.alloc_var("uint32", init=0)
            mask = T.alloc_var("uint32", init=0)
            need = T.alloc_var("int32", init=K)
            cum = T.alloc_var("int32", init=0)
            chosen = T.alloc_var("int32", init=-1)
            slot = T.alloc_local((1,), "int32")
            xv = T.alloc_local((1,), "float32")  # a named value: bit casts need an lvalue in C
            lo, n = KS[t], KE[t] - KS[t]
            for c in T.serial(T.ceildiv(K, OUT_TILE)):
                for i in p.loop(OUT_TILE):
                    if c * OUT_TILE + i < K:
                        picks[c * OUT_TILE + i] = -1
            for i in p.loop(2):
                cnt[i] = 0
            if n <= K:
                for c in T.serial(T.ceildiv(n, CH)):
                    for i in p.loop(CH):
                        if c * CH + i < n:
                            picks[c * CH + i] = lo + c * CH + i
            else:
                for r in T.serial(4):
                    shift = T.Cast("uint32", 24 - 8 * r)
                    for b in p.loop(256):
                        hist[b] = 0
                    for c in T.serial(T.ceildiv(n, CH)):
                        for i in p.loop(CH):
                            if c * CH + i < n:
                                xv[0] = L[t, lo + c * CH + i]
                                key = key_of(xv[0])
                                if T.bitwise_and(key, mask) == prefix:
                                    bump(hist, T.Cast("int32", T.bitwise_and(T.shift_right(key, shift), T.uint32(255))), slot)
                    cum = 0
                    chosen = -1
                    for b in T.serial(256):
                        if chosen < 0:
                            if cum + hist[255 - b] >= need:
                                chosen = 255 - b
                            else:
                                cum = cum + hist[255 - b]
                    need = need - cum
                    prefix = T.bitwise_or(prefix, T.shift_left(T.Cast("uint32", chosen), shift))
                    mask = T.bitwise_or(mask, T.shift_left(T.uint32(255), shift))
                for c in T.serial(T.ceildiv(n, CH)):
                    for i in p.loop(CH):
                        if c * CH + i < n:
                            xv[0] = L[t, lo + c * CH + i]
                            key = key_of(xv[0])
                            if key > prefix:
                                bump(cnt, 0, slot)
                                picks[slot[0]] = lo + c * CH + i
                            elif key == prefix:
                                bump(cnt, 1, slot)
                                if slot[0] < need:
                                    bump(cnt, 0, slot)
                                    picks[slot[0]] = lo + c * CH + i
            T.copy(picks, I[t, 0])

    return topk_select


def build_configs(fp8: str) -> list[dict[str, Any]]:  # float32 logits: the same on every target
    return [dict(K=2048)]
