"""Hostile inputs for conformance cases, shared by every op's case list.

* :func:`poison` fills memory an op must not read (SPEC §10) with NaN, or
  with 0xFF bytes in FP8 and byte caches (NaN in e4m3fn latents, fp32 scales
  and bf16 rope values alike), the way FlashMLA's own tests fill unused cache
  slots. A backend that multiplies p = 0 by such a row, or masks by adding
  -inf, turns NaN.
* :func:`strided_views` rebuilds every tensor argument of a case as a view
  with a storage offset and padded rows, the padding poisoned too, so a
  kernel that assumes contiguous memory (ignores strides, or the offset)
  reads NaN / garbage instead of lucky neighbours.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

FP8 = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)
POISON_INT = 1 << 30
"""What the padding of a strided integer view holds: an index far outside any table."""

Make = Callable[[torch.Generator], dict[str, Any]]


def poison(t: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """``t`` with the (broadcast) positions of ``where`` poisoned: NaN for floats, 0xFF bytes for
    FP8 and uint8, POISON_INT for integers. Returns a new tensor."""
    t = t.clone()
    if t.dtype in FP8 or t.dtype == torch.uint8:
        t.view(torch.uint8)[where.expand_as(t)] = 0xFF
    elif t.is_floating_point():
        t[where.expand_as(t)] = float("nan")
    else:
        t[where.expand_as(t)] = POISON_INT
    return t


def _fill_poison(buf: torch.Tensor) -> None:
    if buf.dtype in FP8 or buf.dtype == torch.uint8:
        buf.view(torch.uint8).fill_(0xFF)
    elif buf.is_floating_point():
        buf.fill_(float("nan"))
    elif buf.dtype == torch.bool:
        buf.fill_(True)
    else:
        buf.fill_(POISON_INT)


def strided_copy(t: torch.Tensor, offset: int = 3, pad: int = 5) -> torch.Tensor:
    """The same values as ``t`` in a view of a larger, poisoned buffer: storage offset > 0 and every
    row padded (last dim stride 1; a 1-d tensor gets stride 2). Empty tensors come back as they are."""
    if t.numel() == 0 or t.dim() == 0:
        return t
    if t.dim() == 1:
        buf = torch.empty(2 * t.shape[0] + offset, dtype=t.dtype)
        _fill_poison(buf)
        view = buf[offset::2]
    else:
        *lead, last = t.shape
        buf = torch.empty(*lead, last + pad + offset, dtype=t.dtype)
        _fill_poison(buf)
        view = buf[..., offset:offset + last]
    view.copy_(t)
    return view


def strided_views(make: Make, skip: tuple[str, ...] = ()) -> Make:
    """A case builder whose tensor arguments (all but ``skip``) are :func:`strided_copy` views."""
    def wrapped(gen: torch.Generator) -> dict[str, Any]:
        args = make(gen)
        return {k: strided_copy(v) if isinstance(v, torch.Tensor) and k not in skip else v for k, v in args.items()}
    return wrapped
