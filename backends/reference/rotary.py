"""Reference YaRN table, RoPE in both pairings and the Sylvester Hadamard
rotation (SPEC §3), float64."""
from __future__ import annotations

import functools
import math

import torch


def _correction_dim(rotations: float, dim: int, theta: float, original_seq_len: int) -> float:
    """The (fractional) frequency index whose wavelength fits ``rotations``
    full turns into the original context."""
    return dim * math.log(original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_freqs(dim: int = 64, theta: float = 10000.0, factor: float = 40.0, original_seq_len: int = 4096,
               beta_fast: float = 32, beta_slow: float = 1) -> torch.Tensor:
    """f_i = theta^(-2i/dim), blended towards f_i / factor by a linear ramp
    between the correction indices low = floor(corr(beta_fast)) and
    high = ceil(corr(beta_slow)). factor = 1 gives the plain RoPE table.

    The clamp of low/high to [0, dim - 1] and the widening of an empty ramp
    follow the release's precompute_freqs_cis; neither changes V3.2's table
    (low = 10, high = 23)."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    base = float(theta) ** (-2.0 * i / dim)
    low = max(math.floor(_correction_dim(beta_fast, dim, theta, original_seq_len)), 0)
    high = min(math.ceil(_correction_dim(beta_slow, dim, theta, original_seq_len)), dim - 1)
    if high == low:
        high += 0.001
    ramp = ((i - low) / (high - low)).clamp(0.0, 1.0)
    return base / factor * ramp + base * (1.0 - ramp)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate pair i of every head of token t by positions[t] * freqs[i].
    interleaved: pair i is (x[2i], x[2i+1]); rotate-half: (x[i], x[i + D/2]).
    The angle is formed in float64 (the release forms it in float32, which is
    off by up to |angle| * 2^-24 at long positions)."""
    h = x.double()
    half = h.shape[-1] // 2
    angle = positions.double()[:, None] * freqs.double()[None, :]  # [T, D/2]
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]
    if interleaved:
        a, b = h[..., 0::2], h[..., 1::2]
    else:
        a, b = h[..., :half], h[..., half:]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    y = torch.empty_like(h)
    if interleaved:
        y[..., 0::2], y[..., 1::2] = ra, rb
    else:
        y[..., :half], y[..., half:] = ra, rb
    return y


@functools.lru_cache(maxsize=16)
def _sylvester(d: int) -> torch.Tensor:
    """The unnormalized Sylvester Hadamard matrix H_d (d a power of two):
    H_1 = [1], H_2n = [[H_n, H_n], [H_n, -H_n]]. Symmetric, H H^T = d I. Cached: never
    hand it out to code that could write into it."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """y = x . H_D * D^-0.5 (the ordering of fast_hadamard_transform)."""
    d = x.shape[-1]
    return (x.double() @ _sylvester(d)) * d ** -0.5
