"""The 656-byte FP8 MLA latent cache: 512 fp8 latent bytes (four 128-tiles),
4 fp32 tile scales (ue8m0 values), 64 bf16 rope values per token."""
from __future__ import annotations

import torch

from ...core.fp8 import UE8M0, Fp8Format, fp8_format

LATENT, ROPE, TILE = 512, 64, 128
SCALES_AT, ROPE_AT, WIDTH = LATENT, LATENT + 4 * (LATENT // TILE), LATENT + 4 * (LATENT // TILE) + 2 * ROPE


def mla_cache_pack(kv: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    f = fp8_format(fmt, "mla_cache_pack")
    n = kv.shape[0]
    g = kv[:, :LATENT].float().reshape(n, LATENT // TILE, TILE)
    s = UE8M0.scale(g.abs().amax(-1), f)                                      # [N, 4]
    y = f.cast(g / s.unsqueeze(-1)).reshape(n, LATENT)
    rope = kv[:, LATENT:].to(torch.bfloat16).contiguous()
    return torch.cat((y.view(torch.uint8), s.contiguous().view(torch.uint8), rope.view(torch.uint8)), 1)


def unpack_rows(rows: torch.Tensor, fmt: str | Fp8Format) -> torch.Tensor:
    """[..., 656] bytes -> [..., 576] fp32. Works on any gathered subset of
    rows, so decode dequantizes only the rows its indices name."""
    f = fp8_format(fmt, "mla_cache_unpack")
    lat = rows[..., :SCALES_AT].contiguous().view(f.dtype).float()
    s = rows[..., SCALES_AT:ROPE_AT].contiguous().view(torch.float32)
    rope = rows[..., ROPE_AT:WIDTH].contiguous().view(torch.bfloat16).float()
    lat = (lat.unflatten(-1, (LATENT // TILE, TILE)) * s.unsqueeze(-1)).flatten(-2)
    return torch.cat((lat, rope), -1)


def mla_cache_unpack(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    return unpack_rows(cache, fmt)
