"""YaRN frequencies, RoPE in both pairings, and the Hadamard rotation."""
from __future__ import annotations

import functools
import math

import torch


def yarn_freqs(dim: int = 64, theta: float = 10000.0, factor: float = 40.0, original_seq_len: int = 4096,
               beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    # a 32-entry table: computed in float64 so the only rounding is the final fp32 cast
    f = 1.0 / (float(theta) ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def corr(rot: float) -> float:
        return dim * math.log(original_seq_len / (rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / ((high - low) or 0.001)).clamp(0, 1)
    return (f / factor * ramp + f * (1 - ramp)).float()


def _angles_dtype(device: torch.device) -> torch.dtype:
    # angle = t * f reaches ~1e5 rad at long context; in fp32 that is off by ~1e-2 rad, so use float64 where it exists
    return torch.float32 if device.type == "mps" else torch.float64


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    dt = _angles_dtype(x.device)
    ang = positions.to(dt)[:, None] * freqs.to(dt)[None, :]           # [T, D/2]
    cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]
    h = x.float()
    if interleaved:
        a, b = h[..., 0::2], h[..., 1::2]
        return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).to(x.dtype)
    a, b = h.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)


@functools.lru_cache(maxsize=16)
def _hadamard_matrix(d: int, device: torch.device) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < d:  # Sylvester doubling: log2(d) steps on a d x d table, not a loop over data
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return (h * d ** -0.5).to(device)


def hadamard(x: torch.Tensor) -> torch.Tensor:
    return (x.float() @ _hadamard_matrix(x.shape[-1], x.device)).to(x.dtype)
