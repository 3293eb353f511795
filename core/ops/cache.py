"""The 656-byte-per-token FP8 MLA latent cache layout (SPEC §6). The
indexer's key cache lives with the indexer (core/ops/indexer.py)."""
from __future__ import annotations

import torch

from dsport.core.fp8 import FP8_FORMATS, Fp8Format
from dsport.core.spec import OpSpec, Output, Param, Tensor, register

FMT = Param("fmt", (str, Fp8Format), "e4m3fn", tuple(FP8_FORMATS))

mla_cache_pack = register(OpSpec(
    name="mla_cache_pack", family="cache",
    summary="Pack latent rows [N, 576] into 656 B each: 512 fp8 (four 128-tiles, ue8m0 scales), 4 fp32 scales, 64 bf16 rope values.",
    args=(Tensor("kv", ("N", 576)), FMT),
    outputs=(Output("cache", ("N", 656), torch.uint8),),
    metric="exact", source="FlashMLA sparse decode FP8 cache layout (V3.2)",
))

mla_cache_unpack = register(OpSpec(
    name="mla_cache_unpack", family="cache",
    summary="Inverse of mla_cache_pack: [N, 656] bytes -> dequantized [N, 576] float32.",
    args=(Tensor("cache", ("N", 656), ("uint8",)), FMT),
    outputs=(Output("kv", ("N", 576), torch.float32),),
    metric="exact", source="FlashMLA sparse decode FP8 cache layout (V3.2)",
))
