"""Timing one call: warm-up, repeats, median and spread.

Each repeat is timed on its own: with device events where the device has them
(CUDA and HIP share torch.cuda.Event; Ascend has torch.npu.Event), with the
monotonic clock on a CPU. Inputs smaller than twice the last-level cache would
otherwise be timed cache-warm, so they are rotated through enough copies to
exceed it, or, when that needs too many copies, the cache is flushed by writing
a scratch buffer between repeats (outside the timed region).
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .hardware import last_level_cache_bytes

MAX_COPIES = 8            # rotation beyond this costs more memory than a flush costs time
MAX_ROTATION_BYTES = 1 << 30


@dataclass
class Timing:
    times_s: list[float]
    clock: str            # "cuda-event", "npu-event", "perf_counter"
    cache: str            # how cache-warm figures were avoided
    warmup: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def to_json(self) -> dict[str, Any]:
        ts = sorted(self.times_s)
        q1, q3 = _quantile(ts, 0.25), _quantile(ts, 0.75)
        return {"median_s": self.median_s, "min_s": ts[0], "max_s": ts[-1], "iqr_s": q3 - q1,
                "repeats": len(ts), "warmup": self.warmup, "clock": self.clock, "cache": self.cache, "times_s": ts}


def _quantile(ts: list[float], q: float) -> float:
    pos = q * (len(ts) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ts[lo] + (ts[hi] - ts[lo]) * (pos - lo)


def _device_of(args: Mapping[str, Any]) -> torch.device:
    for v in args.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _tensor_bytes(args: Mapping[str, Any]) -> int:
    return sum(v.numel() * v.element_size() for v in args.values() if isinstance(v, torch.Tensor))


class _Clock:
    """start()/stop() around one call; seconds() after all calls are done."""

    def __init__(self, device: torch.device):
        self.kind = "perf_counter"
        self.mod = None
        if device.type == "cuda":
            self.kind, self.mod = "cuda-event", torch.cuda
        elif device.type == "npu":
            self.kind, self.mod = "npu-event", getattr(torch, "npu")
        self.marks: list[tuple[Any, Any]] = []

    def time(self, fn: Callable[[], Any]) -> None:
        if self.mod is None:
            t0 = time.perf_counter_ns()
            fn()
            self.marks.append((t0, time.perf_counter_ns()))
        else:
            a, b = self.mod.Event(enable_timing=True), self.mod.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            self.marks.append((a, b))

    def seconds(self) -> list[float]:
        if self.mod is None:
            return [(b - a) * 1e-9 for a, b in self.marks]
        self.mod.synchronize()
        return [a.elapsed_time(b) * 1e-3 for a, b in self.marks]

    def sync(self) -> None:
        if self.mod is not None:
            self.mod.synchronize()


def _clone(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def time_call(fn: Callable[..., Any], args: Mapping[str, Any], warmup: int = 1, repeats: int = 5,
              min_repeats: int = 3, budget_s: float = 2.0, llc_bytes: int | None = None) -> Timing:
    """Time ``fn(**args)``: ``warmup`` untimed calls, then up to ``repeats`` timed ones,
    stopping early (after ``min_repeats``) once ``budget_s`` of wall time is spent."""
    device = _device_of(args)
    llc = last_level_cache_bytes(device) if llc_bytes is None else llc_bytes
    size = max(_tensor_bytes(args), 1)
    copies = math.ceil(2 * llc / size)
    sets = [dict(args)]
    flush: torch.Tensor | None = None
    if size >= 2 * llc:
        cache = f"none needed: inputs {size / 2**20:.1f} MiB >= 2x LLC ({llc / 2**20:.0f} MiB)"
    elif copies <= MAX_COPIES and copies * size <= MAX_ROTATION_BYTES:
        sets += [_clone(args) for _ in range(copies - 1)]
        cache = f"rotated {copies} input sets ({copies * size / 2**20:.1f} MiB > 2x LLC {llc / 2**20:.0f} MiB)"
    else:
        flush = torch.empty(2 * llc // 4, dtype=torch.int32, device=device)
        cache = f"flushed: {2 * llc / 2**20:.0f} MiB written between repeats (inputs {size / 2**10:.0f} KiB)"
    clock = _Clock(device)
    for i in range(warmup):
        fn(**sets[i % len(sets)])
    clock.sync()
    spent = time.perf_counter()
    for i in range(repeats):
        if flush is not None:
            flush.fill_(i)
        # continue the rotation after the warm-up calls: the first timed call must not reuse a warm set
        clock.time(lambda: fn(**sets[(warmup + i) % len(sets)]))
        if i + 1 >= min_repeats and time.perf_counter() - spent > budget_s:
            break
    return Timing(clock.seconds(), clock.kind, cache, warmup)
