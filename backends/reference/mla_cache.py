"""Reference for the 656-byte-per-token FP8 MLA latent cache (SPEC §6).

Per token, in this byte order:

* bytes   0..511: the 512 latent dims as FP8 (``fmt``), four 128-dim tiles;
* bytes 512..527: four float32 dequantization scales, one per tile, ue8m0
  values (powers of two), native (little-endian) byte order;
* bytes 528..655: the 64 rope dims as bfloat16, never quantized.

The latent is quantized exactly like ``act_quant(kv[:, :512], 128, fmt,
"ue8m0")``, so the cache is bit-exact with the activation quantizer of this
backend; dequantization is ``fp8 * scale`` per tile. (FlashMLA's own test
packer floors the scale, not the amax, at 1e-4: its bytes differ from these
for tiles whose amax is below 1e-4 * fmax.)
"""
from __future__ import annotations

import torch

from . import quant
from ...core.fp8 import Fp8Format, fp8_format

LATENT = 512
ROPE = 64
TILE = 128
SCALES = LATENT // TILE
SCALE_BYTES = 4 * SCALES
WIDTH = LATENT + SCALE_BYTES + 2 * ROPE  # 656


def mla_cache_pack(kv: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    """[N, 576] latent rows -> [N, 656] uint8 cache rows."""
    f = fp8_format(fmt, "mla_cache_pack")
    y, s = quant.act_quant(kv[:, :LATENT], TILE, f, "ue8m0")
    rope = kv[:, LATENT:].to(torch.bfloat16)
    return torch.cat([y.contiguous().view(torch.uint8), s.contiguous().view(torch.uint8),
                      rope.contiguous().view(torch.uint8)], dim=-1)


def split_cache(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn",
                op: str = "mla_cache_unpack") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three fields of [..., 656] cache bytes: (fp8 [..., 512], fp32 scales [..., 4], bf16 rope [..., 64])."""
    f = fp8_format(fmt, op)
    c = cache.contiguous()
    latent = c[..., :LATENT].view(f.dtype)
    scales = c[..., LATENT:LATENT + SCALE_BYTES].contiguous().view(torch.float32)
    rope = c[..., LATENT + SCALE_BYTES:].contiguous().view(torch.bfloat16)
    return latent, scales, rope


def unpack64(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn", op: str = "mla_cache_unpack") -> torch.Tensor:
    """[..., 656] cache bytes -> [..., 576] float64, with no rounding at all: the
    attention reference reads the cache through this."""
    latent, scales, rope = split_cache(cache, fmt, op)
    lat = latent.double().unflatten(-1, (SCALES, TILE)) * scales.double().unsqueeze(-1)
    return torch.cat([lat.flatten(-2), rope.double()], dim=-1)


def mla_cache_unpack(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    """[N, 656] uint8 -> [N, 576] float32. Exact for caches written by the packer:
    an e4m3 value times a power of two fits float32's mantissa."""
    latent, scales, rope = split_cache(cache, fmt)
    return torch.cat([quant.dequant(latent, scales, TILE).double(), rope.double()], dim=-1).float()
