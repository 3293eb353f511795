"""The 656-byte-per-token FP8 MLA latent cache layout (SPEC §6). The
indexer's key cache lives with the indexer (core/ops/indexer.py)."""
from __future__ import annotations

import torch

from ..constants import DEEPSEEK_V32 as V32
from ..fp8 import FP8_FORMATS, Fp8Format
from .hostile import strided_views
from ..spec import DEEPSEEK, EDGE, TINY, Case, OpSpec, Output, Param, Tensor, randn, register

FMT = Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS))
SRC = "FlashMLA sparse decode FP8 cache layout (V3.2); FlashMLA tests/quant.py"


def latent_rows(gen: torch.Generator, n: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """[n, 576] rows shaped like kv_norm output (latent, O(1)) and roped k_pe."""
    return torch.randn(n, V32.d_qk, generator=gen).to(dtype)


def fp8_cache_bytes(gen: torch.Generator, n: int, fmt: str = "e4m3fn") -> torch.Tensor:
    """[n, 656] valid cache rows built field by field (not through a packer):
    fp8 latent values, power-of-two fp32 tile scales, bf16 rope."""
    f = FP8_FORMATS[fmt]
    latent = (torch.randn(n, 512, generator=gen) * f.max / 4).clamp(-f.max, f.max).to(f.dtype)
    # four DISTINCT power-of-two tile scales per row, so a swapped tile order shows in every row
    exps = torch.rand(n, 6, generator=gen).argsort(-1)[:, :4] - 11
    scales = torch.exp2(exps.float())
    rope = torch.randn(n, 64, generator=gen).bfloat16()
    return torch.cat([latent.view(torch.uint8), scales.view(torch.uint8), rope.view(torch.uint8)], dim=-1)


def _signed_zeros(gen: torch.Generator, n: int) -> torch.Tensor:
    kv = latent_rows(gen, n, torch.float32)
    kv[:, 1:512:2] = -1e-5 * kv[:, 1:512:2].abs()
    kv[:, 0:512:128] = 50.0  # sets each tile's scale
    return kv.bfloat16()


def _pack_cases() -> list[Case]:
    def special_tiles(gen):
        kv = latent_rows(gen, 3, torch.float32)
        kv[0, :128] = 0.0  # all-zero tile: the amax floor sets its scale
        kv[1, 128:256] = 0.0
        kv[1, 130] = 900.0  # outlier sets its tile's scale
        kv[2, 256:384] = 448.0 * 2.0 ** -3  # exact power-of-two amax keeps its scale
        return {"kv": kv}

    return [
        Case("mla_cache_pack", "tiny", lambda g: {"kv": latent_rows(g, 2)}, tags=TINY),
        Case("mla_cache_pack", "N0", lambda g: {"kv": latent_rows(g, 0)}, tags=EDGE),
        Case("mla_cache_pack", "fnuz", lambda g: {"kv": latent_rows(g, 16), "fmt": "e4m3fnuz"}),
        Case("mla_cache_pack", "fp32-input", lambda g: {"kv": latent_rows(g, 8, torch.float32) * 3}),
        Case("mla_cache_pack", "special-tiles", special_tiles, tags=EDGE),
        Case("mla_cache_pack", "special-tiles-fnuz", lambda g: {**special_tiles(g), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case("mla_cache_pack", "non-contiguous", lambda g: {"kv": latent_rows(g, 12).t().contiguous().t()}, tags=EDGE),
        Case("mla_cache_pack", "fnuz-negative-zero", lambda g: {"kv": _signed_zeros(g, 6), "fmt": "e4m3fnuz"}, tags=EDGE,
             note="tiny negatives that round to zero: 0x00 in e4m3fnuz, never 0x80 (its NaN)"),
        Case("mla_cache_pack", "fnuz-negative-zero-fp32", lambda g: {"kv": _signed_zeros(g, 3).float(), "fmt": "e4m3fnuz"}, tags=EDGE),
        Case("mla_cache_pack", "strided-views", strided_views(lambda g: {"kv": latent_rows(g, 5)}), tags=EDGE),
        Case("mla_cache_pack", "ds-4k-tokens", lambda g: {"kv": latent_rows(g, 4096)}, tags=DEEPSEEK),
    ]


def _unpack_cases() -> list[Case]:
    return [
        Case("mla_cache_unpack", "tiny", lambda g: {"cache": fp8_cache_bytes(g, 2)}, tags=TINY),
        Case("mla_cache_unpack", "N0", lambda g: {"cache": fp8_cache_bytes(g, 0)}, tags=EDGE),
        Case("mla_cache_unpack", "fnuz", lambda g: {"cache": fp8_cache_bytes(g, 16, "e4m3fnuz"), "fmt": "e4m3fnuz"}),
        Case("mla_cache_unpack", "non-contiguous", lambda g: {"cache": fp8_cache_bytes(g, 8)[::2]}, tags=EDGE),
        Case("mla_cache_unpack", "strided-views", strided_views(lambda g: {"cache": fp8_cache_bytes(g, 6)}), tags=EDGE),
        Case("mla_cache_unpack", "fnuz-4-tiles", lambda g: {"cache": fp8_cache_bytes(g, 5, "e4m3fnuz"), "fmt": "e4m3fnuz"},
             tags=EDGE, note="four distinct tile scales per row: a tile-order swap shows"),
        Case("mla_cache_unpack", "ds-4k-tokens", lambda g: {"cache": fp8_cache_bytes(g, 4096)}, tags=DEEPSEEK),
    ]


mla_cache_pack = register(OpSpec(
    name="mla_cache_pack", family="cache",
    summary="Pack latent rows [N, 576] into 656 B each: 512 fp8 (four 128-tiles, ue8m0 scales), 4 fp32 scales, 64 bf16 rope values.",
    args=(Tensor("kv", ("N", 576)), FMT),
    outputs=(Output("cache", ("N", 656), torch.uint8),),
    metric="exact", source=SRC,
    cases=_pack_cases,
))

mla_cache_unpack = register(OpSpec(
    name="mla_cache_unpack", family="cache",
    summary="Inverse of mla_cache_pack: [N, 656] bytes -> dequantized [N, 576] float32.",
    args=(Tensor("cache", ("N", 656), ("uint8",)), FMT),
    outputs=(Output("kv", ("N", 576), torch.float32),),
    metric="exact", source=SRC,
    cases=_unpack_cases,
))
