"""Compiling and calling the CPU (``c`` target) form of the TileLang kernels.

Compiled kernels are cached twice: in memory, keyed by kernel and static
configuration (row counts are dynamic dims, so different batch sizes share
one kernel), and on disk by TileLang itself (``TILELANG_CACHE_DIR``, default
``~/.tilelang/cache``), so a second process does not recompile either.

The CPU form exchanges bf16 and fp8 tensors as their raw bits (the ``c`` code
generator has no such C types, see dsport.tilelang_kernels.target): inputs
are passed as uint16/uint8 views and outputs allocated as bits, then viewed
back. Nothing is converted on the host.
"""
from __future__ import annotations

import functools
import importlib
import logging
import time
from typing import Any

import torch

from ...tilelang_kernels.target import PROFILES

log = logging.getLogger(__name__)

BITS = {torch.bfloat16: torch.uint16, torch.float8_e4m3fn: torch.uint8, torch.float8_e4m3fnuz: torch.uint8}
TL_NAME = {torch.bfloat16: "bfloat16", torch.float32: "float32"}


@functools.lru_cache(maxsize=None)
def compiled(kernel: str, config: tuple[tuple[str, Any], ...]) -> Any:
    """The CPU kernel for one static configuration (a hashable tuple of items)."""
    import tilelang

    mod = importlib.import_module(f"dsport.tilelang_kernels.{kernel}")
    t0 = time.perf_counter()
    func = mod.program(PROFILES["c"], **dict(config))
    k = tilelang.compile(func, target="c", execution_backend="cython")
    log.info("tilelang: %s%s ready in %.1fs", kernel, dict(config), time.perf_counter() - t0)
    return k


def run(kernel: str, *args: torch.Tensor, **config: Any) -> None:
    """Call the CPU kernel; tensors are passed as contiguous raw bits."""
    compiled(kernel, tuple(sorted(config.items())))(*[bits(a) for a in args])


def bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    return t.view(BITS[t.dtype]) if t.dtype in BITS else t


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)
