"""Lightning indexer logits, the first stage of DSA (SPEC §4)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from ..fp8 import FP8_FORMATS, Fp8Format
from .hostile import poison, strided_views
from ..spec import DEEPSEEK, DEEPSEEK_FULL, DTYPE_GROUPS, EDGE, POISON, TINY, Case, Check, OpSpec, Output, Param, Tensor, randn, register

SRC = "DeepGEMM fp8_mqa_logits / fp8_paged_mqa_logits; DeepSeek-V3.2-Exp inference/kernel.py fp8_index"
KEY_DIM = V32.index_head_dim
HEADS_PER_RANK = (64, 32, 16, 8)
LONG = 70_000
"""A context past 65536 (the model runs to 163840): int16 / fp16 position arithmetic breaks here."""


# -- case builders ---------------------------------------------------------------
def _fp8_codes(gen: torch.Generator, *shape: int, fmt: str) -> torch.Tensor:
    """Random FP8 values spread over the format's range (no NaN codes)."""
    f = FP8_FORMATS[fmt]
    return (torch.randn(*shape, generator=gen) * f.max / 4).clamp(-f.max, f.max).to(f.dtype)


def _pow2_scales(gen: torch.Generator, *shape: int) -> torch.Tensor:
    """ue8m0-like scales: powers of two, as act_quant with ue8m0 produces."""
    return torch.exp2(torch.randint(-10, -3, shape, generator=gen).float())


def windows(gen: torch.Generator, t: int, s: int, kind: str, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """ks, ke for: 'full' rows, 'causal' prefill after a prefix (ke = prefix + t + 1),
    'random' windows, or 'empty' (every other row ks == ke)."""
    if kind == "full":
        ks, ke = torch.zeros(t, dtype=torch.int32), torch.full((t,), s, dtype=torch.int32)
    elif kind == "causal":
        ks, ke = torch.zeros(t, dtype=torch.int32), torch.arange(prefix + 1, prefix + t + 1, dtype=torch.int32)
    else:
        a, b = torch.randint(0, s + 1, (2, t), generator=gen)
        ks, ke = torch.minimum(a, b).int(), torch.maximum(a, b).int()
        if kind == "empty":
            ke[::2] = ks[::2]
            ke[1::2] = s
    return ks, ke


def _indexer_case(t: int, s: int, h: int, d: int = KEY_DIM, fmt: str | None = "e4m3fn", window: str = "full",
                  prefix: int = 0, q_scale: float = 1.0):
    """Float q/k (bf16) when fmt is None, else FP8 q/k with per-token k_scale.
    weights carry H^-0.5 * D^-0.5 (and a q scale on the FP8 path)."""
    def make(gen):
        n = prefix + t if window == "causal" else s
        if fmt is None:
            q, k, extra = randn(gen, t, h, d), randn(gen, n, d), {}
        else:
            q, k = _fp8_codes(gen, t, h, d, fmt=fmt), _fp8_codes(gen, n, d, fmt=fmt)
            extra = {"k_scale": _pow2_scales(gen, n)}
        weights = torch.randn(t, h, generator=gen) * (h ** -0.5 * d ** -0.5 * q_scale)
        ks, ke = windows(gen, t, n, window, prefix)
        return {"q": q, "k": k, "weights": weights, "ks": ks, "ke": ke, **extra}
    return make


def _indexer_cases() -> list[Case]:
    c = "indexer_logits"

    def nan_q(gen):
        args = _indexer_case(3, 16, 2, 32, fmt=None)(gen)
        args["q"][1, 0, 4] = float("nan")  # row 1 turns NaN inside its window; rows 0, 2 stay finite
        return args

    def zero_rows(gen):
        args = _indexer_case(4, 32, 4, fmt="e4m3fn")(gen)
        args["q"][0] = 0.0  # relu(0) = 0: a row of exact zeros
        args["k"][5] = 0.0
        return args

    def non_contiguous(gen):
        args = _indexer_case(5, 40, 4, fmt="e4m3fn", window="random")(gen)
        args["q"] = args["q"].transpose(0, 1).contiguous().transpose(0, 1)
        args["k"] = args["k"].t().contiguous().t()
        args["weights"] = args["weights"].t().contiguous().t()
        return args

    def poison_outside_windows(fmt):
        def make(gen):
            args = _indexer_case(5, 48, 4, fmt=fmt, window="random")(gen)
            pos = torch.arange(args["k"].shape[0])
            inside = ((pos[None, :] >= args["ks"][:, None]) & (pos[None, :] < args["ke"][:, None])).any(0)
            args["k"] = poison(args["k"], ~inside[:, None])
            if "k_scale" in args:
                args["k_scale"] = poison(args["k_scale"], ~inside)
            return args
        return make

    def long_context(fmt, s=LONG):
        def make(gen):
            # one query row keeps the Triton interpreter (a program per 64 keys) at a few seconds
            args = _indexer_case(1, s, 2, 16, fmt=fmt)(gen)
            args["ks"] = torch.tensor([3], dtype=torch.int32)
            return args
        return make

    cases = [
        Case(c, "tiny-float", _indexer_case(2, 8, 2, 16, fmt=None), tags=TINY),
        Case(c, "tiny-fp8", _indexer_case(3, 16, 4, fmt="e4m3fn"), tags=TINY),
        Case(c, "fp8-fnuz", _indexer_case(4, 64, 8, fmt="e4m3fnuz", window="random")),
        Case(c, "float-causal-prefix", _indexer_case(8, 0, 4, 64, fmt=None, window="causal", prefix=40)),
        Case(c, "fp8-causal-prefix", _indexer_case(8, 0, 8, fmt="e4m3fn", window="causal", prefix=100)),
        Case(c, "empty-windows", _indexer_case(6, 50, 4, fmt="e4m3fn", window="empty"), tags=EDGE),
        Case(c, "T0", _indexer_case(0, 16, 4, fmt="e4m3fn"), tags=EDGE),
        Case(c, "T1-decode", _indexer_case(1, 300, 8, fmt="e4m3fn"), tags=EDGE),
        Case(c, "zero-rows", zero_rows, tags=EDGE),
        Case(c, "nan", nan_q, tags=EDGE),
        Case(c, "non-contiguous", non_contiguous, tags=EDGE),
        Case(c, "poison-outside-windows", poison_outside_windows(None), tags=POISON, fill_uninitialized=True,
             note="NaN in every key no window covers: logits there are -inf, elsewhere unchanged"),
        Case(c, "poison-outside-windows-fp8", poison_outside_windows("e4m3fn"), tags=POISON, fill_uninitialized=True),
        Case(c, "long-context-fp8", long_context("e4m3fn"), tags=EDGE, note="S = 70000 keys (H = 2, D = 16 keep it CPU-sized)"),
        Case(c, "context-5000", long_context(None, 5000), tags=EDGE, note="S = 5000, past 4096 (original_seq_len)"),
        Case(c, "strided-views", strided_views(_indexer_case(5, 40, 4, fmt="e4m3fn", window="random")), tags=EDGE,
             note="every argument an offset view of a padded, poisoned buffer"),
        Case(c, "ds-shape", _indexer_case(4, 256, V32.index_n_heads, fmt="e4m3fn", window="causal", prefix=252), tags=DEEPSEEK),
        Case(c, "ds-prefill", _indexer_case(64, 0, V32.index_n_heads, fmt="e4m3fn", window="causal", prefix=4032),
             tags=DEEPSEEK_FULL, note="64 heads x 128 dims, 4096 keys: 4.3 GFLOP, about a second in float64"),
    ]
    cases += [Case(c, f"heads-{h}", _indexer_case(4, 128, h, fmt="e4m3fn", window="random"), tags=EDGE) for h in HEADS_PER_RANK]

    def nan_fp8_key(gen):
        args = _indexer_case(3, 16, 4, fmt="e4m3fn")(gen)
        args["k"].view(torch.uint8)[5, 9] = 0x7F  # e4m3fn NaN: key 5's logit is NaN in every row whose window holds it
        return args

    cases += [Case(c, "nan-fp8-key", nan_fp8_key, tags=EDGE, note="a NaN code in a key inside the windows: NaN there, not -inf or 0")]
    return cases


def _pack_blocks(k8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Lay FP8 keys [NB, BS, 128] and fp32 scales [NB, BS] out as the paged
    cache: per block BS*128 key bytes, then BS little-endian fp32 scales."""
    nb, bs, _ = k8.shape
    data = k8.reshape(nb, bs * KEY_DIM).view(torch.uint8)
    return torch.cat([data, scale.reshape(nb, bs).contiguous().view(torch.uint8)], dim=1).reshape(nb, bs, KEY_DIM + 4)


def _cache(gen: torch.Generator, nb: int, bs: int, fmt: str = "e4m3fn") -> torch.Tensor:
    return _pack_blocks(_fp8_codes(gen, nb, bs, KEY_DIM, fmt=fmt), _pow2_scales(gen, nb, bs))


def _paged_case(b: int, h: int, bs: int, max_blocks: int, spare: int = 2, fmt: str = "e4m3fn",
                seqlens: list[int] | None = None):
    """Sequences whose blocks are scattered over a shared pool (with spare,
    never-referenced blocks); table entries past a sequence's end are -1."""
    def make(gen):
        lens = torch.tensor(seqlens, dtype=torch.int32) if seqlens is not None else \
            torch.randint(1, max_blocks * bs + 1, (b,), generator=gen).int()
        used = [-(-int(n) // bs) for n in lens]
        nb = sum(used) + spare
        pool = torch.randperm(nb, generator=gen).int()
        table = torch.full((b, max_blocks), -1, dtype=torch.int32)
        at = 0
        for i, u in enumerate(used):
            table[i, :u] = pool[at: at + u]
            at += u
        weights = torch.randn(b, h, generator=gen) * (h ** -0.5 * KEY_DIM ** -0.5)
        return {"q": _fp8_codes(gen, b, h, KEY_DIM, fmt=fmt), "k_cache": _cache(gen, nb, bs, fmt),
                "weights": weights, "block_table": table, "seqlens": lens}
    return make


def _poison_paged(make):
    """0xFF bytes (NaN keys and scales) in every pool slot at or past seqlens: the tail of each last
    block and every spare block."""
    def wrapped(gen):
        a = make(gen)
        cache, bt, sl = a["k_cache"], a["block_table"], a["seqlens"]
        nb, bs, _ = cache.shape
        live = torch.zeros(nb, bs, dtype=torch.bool)
        for b in range(bt.shape[0]):
            for p in range(int(sl[b])):
                live[int(bt[b, p // bs]), p % bs] = True
        # the block layout keeps keys and scales apart: poison both parts of each dead slot
        keys = cache.reshape(nb, bs * 132)[:, : bs * KEY_DIM].reshape(nb, bs, KEY_DIM)
        scales = cache.reshape(nb, bs * 132)[:, bs * KEY_DIM:].reshape(nb, bs, 4)
        a["k_cache"] = torch.cat([poison(keys, ~live[..., None]).reshape(nb, -1),
                                  poison(scales, ~live[..., None]).reshape(nb, -1)], 1).reshape(nb, bs, 132)
        return a
    return wrapped


def _paged_cases() -> list[Case]:
    c = "indexer_logits_paged"
    return [
        Case(c, "poison-0xff", _poison_paged(_paged_case(3, 8, 64, 4, spare=3, seqlens=[70, 5, 200])), tags=POISON,
             fill_uninitialized=True, note="0xFF bytes past seqlens and in spare blocks: logits there -inf, elsewhere unchanged"),
        Case(c, "poison-0xff-page16-fnuz", _poison_paged(_paged_case(3, 4, 16, 3, fmt="e4m3fnuz", seqlens=[0, 17, 40])),
             tags=POISON, fill_uninitialized=True),
        Case(c, "strided-views", strided_views(_paged_case(3, 8, 64, 4)), tags=EDGE,
             note="q, the cache (an offset view of a padded pool), weights, block_table, seqlens"),
        Case(c, "tiny", _paged_case(2, 4, 64, 2, seqlens=[70, 5]), tags=TINY),
        Case(c, "page-size-1", _paged_case(3, 4, 1, 40), tags=EDGE),
        Case(c, "page-size-64", _paged_case(3, 8, 64, 4)),
        Case(c, "fnuz", _paged_case(2, 8, 64, 3, fmt="e4m3fnuz")),
        Case(c, "empty-sequence", _paged_case(3, 4, 16, 3, seqlens=[0, 17, 48]), tags=EDGE),
        Case(c, "B0", _paged_case(0, 4, 64, 2, seqlens=[]), tags=EDGE),
        *[Case(c, f"heads-{h}", _paged_case(2, h, 64, 2), tags=EDGE) for h in HEADS_PER_RANK],
        Case(c, "ds-decode", _paged_case(4, V32.index_n_heads, 64, 16), tags=DEEPSEEK),
    ]


def _pack_cases() -> list[Case]:
    c = "index_cache_pack"

    def special(gen):
        k = torch.randn(2, 4, KEY_DIM, generator=gen)
        k[0, 1] = 0.0  # amax floor
        k[0, 2] = 448.0  # exactly fmax: scale 1
        k[1, 0, ::2], k[1, 0, 1::2] = 448.0, -448.0
        k[1, 3, 9] = 1.0e4  # outlier sets its token's scale
        return {"k": k.bfloat16()}

    return [
        Case(c, "tiny", lambda g: {"k": randn(g, 2, 64, KEY_DIM)}, tags=TINY),
        Case(c, "page-size-1", lambda g: {"k": randn(g, 5, 1, KEY_DIM)}, tags=EDGE),
        Case(c, "fnuz", lambda g: {"k": randn(g, 3, 64, KEY_DIM, scale=3.0), "fmt": "e4m3fnuz"}),
        Case(c, "zeros-fmax-outlier", special, tags=EDGE),
        Case(c, "zeros-fmax-outlier-fnuz", lambda g: {**special(g), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case(c, "NB0", lambda g: {"k": randn(g, 0, 64, KEY_DIM)}, tags=EDGE),
        Case(c, "non-contiguous", lambda g: {"k": randn(g, 64, 2, KEY_DIM).transpose(0, 1)}, tags=EDGE),
        Case(c, "ds-pool", lambda g: {"k": randn(g, 32, 64, KEY_DIM)}, tags=DEEPSEEK),
        Case(c, "fnuz-negative-zero", lambda g: {"k": _signed_zeros(g, 2, 8), "fmt": "e4m3fnuz"}, tags=EDGE,
             note="negative values that round to zero: e4m3fnuz has no -0, its 0x80 is NaN"),
        Case(c, "fnuz-negative-zero-page1", lambda g: {"k": _signed_zeros(g, 5, 1), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case(c, "strided-views", strided_views(lambda g: {"k": randn(g, 3, 16, KEY_DIM)}), tags=EDGE),
    ]


def _signed_zeros(gen: torch.Generator, nb: int, bs: int) -> torch.Tensor:
    """Keys whose amax is ~100 and half of whose values are tiny negatives (-1e-4): those round to zero."""
    k = torch.randn(nb, bs, KEY_DIM, generator=gen)
    k[..., 1::2] = -1e-4 * k[..., 1::2].abs()
    k[..., 0] = 100.0
    return k.bfloat16()


def _unpack_cases() -> list[Case]:
    c = "index_cache_unpack"
    return [
        Case(c, "NB1", lambda g: {"cache": _cache(g, 1, 64)}, tags=EDGE,
             note="one block: the byte slices are contiguous, a returned view would alias the cache"),
        Case(c, "NB1-fnuz", lambda g: {"cache": _cache(g, 1, 16, "e4m3fnuz"), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case(c, "strided-views", strided_views(lambda g: {"cache": _cache(g, 3, 16)}), tags=EDGE),
        Case(c, "tiny", lambda g: {"cache": _cache(g, 2, 64)}, tags=TINY),
        Case(c, "page-size-1", lambda g: {"cache": _cache(g, 7, 1)}, tags=EDGE),
        Case(c, "fnuz", lambda g: {"cache": _cache(g, 3, 64, "e4m3fnuz"), "fmt": "e4m3fnuz"}),
        Case(c, "NB0", lambda g: {"cache": _cache(g, 0, 64)}, tags=EDGE),
        Case(c, "non-contiguous", lambda g: {"cache": _cache(g, 6, 64)[::2]}, tags=EDGE),
    ]


# -- specs -----------------------------------------------------------------------


def _same_kind(a, d) -> bool:
    q8, k8 = a["q"].dtype in DTYPE_GROUPS["fp8"], a["k"].dtype in DTYPE_GROUPS["fp8"]
    return q8 == k8 and (not q8 or a["q"].dtype == a["k"].dtype)


def _scale_iff_fp8(a, d) -> bool:
    return (a["k_scale"] is not None) == (a["k"].dtype in DTYPE_GROUPS["fp8"])


def _bounds_ok(a, d) -> bool:
    ks, ke = a["ks"], a["ke"]
    return ks.numel() == 0 or bool(((ks >= 0) & (ks <= ke) & (ke <= d["S"])).all())


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


KIND_RULE = Check("k", "the same kind as q: both float, or both the same fp8 dtype", _same_kind,
                  lambda a, d: f"q {_dt(a['q'])}, k {_dt(a['k'])}")
SCALE_RULE = Check("k_scale", "a tensor exactly when q and k are fp8 (their dequantization scale), else None", _scale_iff_fp8,
                   lambda a, d: f"k_scale {'given' if a['k_scale'] is not None else 'None'} with k {_dt(a['k'])}")
BOUNDS_RULE = Check("ke", "0 <= ks[t] <= ke[t] <= S", _bounds_ok,
                    lambda a, d: f"ks in [{int(a['ks'].min())}, {int(a['ks'].max())}], ke in [{int(a['ke'].min())}, {int(a['ke'].max())}], S={d['S']}")

indexer_logits = register(OpSpec(
    name="indexer_logits", family="dsa",
    summary="I[t, s] = k_scale[s] * sum_h weights[t, h] * relu(q[t, h] . k[s]) for s in [ks[t], ke[t]), -inf elsewhere.",
    args=(Tensor("q", ("T", "H", "D"), ("float", "fp8")), Tensor("k", ("S", "D"), ("float", "fp8")),
          Tensor("weights", ("T", "H"), ("float",), doc="all factors folded in: w * H^-0.5 * D^-0.5 * q_scale"),
          Tensor("ks", ("T",), ("int32",)), Tensor("ke", ("T",), ("int32",)),
          Tensor("k_scale", ("S",), ("fp32",), optional=True)),
    outputs=(Output("logits", ("T", "S"), torch.float32),),
    checks=(KIND_RULE, SCALE_RULE, BOUNDS_RULE),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["T"] * d["S"] * d["H"] * d["D"],
    cases=_indexer_cases,
))


def _seqlens_ok(a, d) -> bool:
    sl = a["seqlens"]
    return sl.numel() == 0 or bool(((sl >= 0) & (sl <= d["MB"] * d["BS"])).all())


def _table_ok(a, d) -> bool:
    bt = a["block_table"]
    return bt.numel() == 0 or bool(((bt >= -1) & (bt < d["NB"])).all())


def _unmapped_blocks(a, d) -> list[tuple[int, int]]:
    """(b, j) of table entries that are -1 although position j * BS < seqlens[b]."""
    bt, sl = a["block_table"], a["seqlens"]
    needed = torch.arange(d["MB"])[None, :] * d["BS"] < sl.long()[:, None]
    return [tuple(ij) for ij in (needed & (bt < 0)).nonzero().tolist()]


indexer_logits_paged = register(OpSpec(
    name="indexer_logits_paged", family="dsa",
    summary="Decode-time indexer over the paged FP8 key cache (per block: BS x 128 fp8 bytes, then BS fp32 scales): "
            "logits[b, p] for logical position p < seqlens[b], -inf beyond.",
    args=(Tensor("q", ("B", "H", "D"), ("fp8",)), Tensor("k_cache", ("NB", "BS", 132), ("uint8",)),
          Tensor("weights", ("B", "H"), ("float",)), Tensor("block_table", ("B", "MB"), ("int32",)),
          Tensor("seqlens", ("B",), ("int32",))),
    outputs=(Output("logits", ("B", "MB * BS"), torch.float32),),
    checks=(Check("q", "D == 128 (the cache stores 128-dim keys)", lambda a, d: d["D"] == 128, lambda a, d: d["D"]),
            Check("seqlens", "0 <= seqlens[b] <= MB * BS", _seqlens_ok,
                  lambda a, d: f"seqlens in [{int(a['seqlens'].min())}, {int(a['seqlens'].max())}], MB*BS={d['MB'] * d['BS']}"),
            Check("block_table", "entries in [-1, NB) (-1: no block)", _table_ok,
                  lambda a, d: f"entries in [{int(a['block_table'].min())}, {int(a['block_table'].max())}], NB={d['NB']}"),
            Check("block_table", "a block (>= 0) for every page holding a position below seqlens[b]",
                  lambda a, d: not _unmapped_blocks(a, d), lambda a, d: f"-1 at (b, page) {_unmapped_blocks(a, d)[:4]}")),
    metric="close", reduction="D", source=SRC,
    flops=lambda d: 2.0 * d["B"] * d["MB"] * d["BS"] * d["H"] * d["D"],
    cases=_paged_cases,
))

FMT = Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS))

index_cache_pack = register(OpSpec(
    name="index_cache_pack", family="cache",
    summary="Quantize indexer keys per token (ue8m0, one 128-group) into paged blocks: BS x 128 fp8 bytes, then BS fp32 scales.",
    args=(Tensor("k", ("NB", "BS", 128)), FMT),
    outputs=(Output("cache", ("NB", "BS", 132), torch.uint8),),
    metric="exact", source="DeepGEMM fp8_paged_mqa_logits key-cache layout",
    cases=_pack_cases,
))

index_cache_unpack = register(OpSpec(
    name="index_cache_unpack", family="cache",
    summary="Inverse of index_cache_pack: bytes -> (k fp8 [NB, BS, 128], k_scale fp32 [NB, BS]).",
    args=(Tensor("cache", ("NB", "BS", 132), ("uint8",)), FMT),
    outputs=(Output("k", ("NB", "BS", 128), lambda a: FP8_FORMATS[str(a["fmt"])].dtype), Output("k_scale", ("NB", "BS"), torch.float32)),
    metric="exact", source="DeepGEMM fp8_paged_mqa_logits key-cache layout",
    cases=_unpack_cases,
))
