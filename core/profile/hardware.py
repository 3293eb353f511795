"""The roofline of the device a profile runs on: read from hardware.yaml for
accelerators (vendor peaks, each with its source), measured at start on a CPU
(a matmul probe and a streaming-copy probe), because a CPU's attainable peak
depends on its cores, ISA and how many other processes share them."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError

log = logging.getLogger(__name__)
TABLE_PATH = Path(__file__).with_name("hardware.yaml")
REQUIRED = ("peak_bf16_flops", "peak_fp8_flops", "bandwidth", "memory", "units", "fp8_format")


@dataclass
class Roofline:
    """Peaks used to place a measurement: compute peak per math class and bandwidth."""

    name: str
    peak_flops: dict[str, float | None]          # "bf16" / "fp8" -> FLOP/s (None: unknown)
    bandwidth: float | None                      # bytes/s
    origin: str                                  # "table" (vendor peak) or "measured" (probe on this machine)
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@cache
def table() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(TABLE_PATH.read_text())
    devices = doc["devices"]
    for name, d in devices.items():
        missing = [k for k in REQUIRED if k not in d or k not in d.get("sources", {})]
        if missing:
            raise ConfigError(f"hardware.yaml: device '{name}' lacks a value or a source for {missing}")
        for k in ("peak_bf16_flops", "peak_fp8_flops", "bandwidth", "memory"):
            # YAML 1.1 reads '989.4e12' (no exponent sign) as a string
            d[k] = None if d[k] is None else float(d[k])
    return devices


def from_table(name: str) -> Roofline:
    devices = table()
    if name not in devices:
        import difflib

        close = difflib.get_close_matches(name, devices, n=1)
        raise ConfigError(f"hardware: unknown device '{name}'{f' (did you mean {close[0]!r}?)' if close else ''}; "
                          f"known: {sorted(devices)}")
    d = devices[name]
    return Roofline(name, {"bf16": d["peak_bf16_flops"], "fp8": d["peak_fp8_flops"]}, d["bandwidth"], "table",
                    "vendor peak (dense), hardware.yaml", {k: d[k] for k in ("memory", "units", "unit_name", "fp8_format", "arch")})


def match(device_name: str) -> str | None:
    """The table entry whose match strings occur in a device name (longest match wins)."""
    best: tuple[int, str] | None = None
    for name, d in table().items():
        for m in d.get("match", []):
            if m.lower() in device_name.lower() and (best is None or len(m) > best[0]):
                best = (len(m), name)
    return best[1] if best else None


# -- CPU probes ----------------------------------------------------------------------------------
def _best_time(fn, reps: int, budget_s: float = 1.0) -> float:
    """Best of up to ``reps`` timed calls after one warm-up, stopping once ``budget_s`` is spent."""
    fn()
    best, start = float("inf"), time.perf_counter()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return best


def probe_matmul(n: int = 1024, reps: int = 5) -> dict[str, float]:
    """Best-of-reps FLOP/s of one n x n x n matmul per dtype: what this CPU's BLAS
    reaches now (other processes on the cores count against it, as they do for the ops).
    A dtype without a fast CPU kernel (bf16 on CPUs lacking AMX/AVX512-BF16) is first
    timed at n/4; if that is 10x slower than fp32 it is not probed at full size."""
    out = {}
    a, b = torch.randn(n, n), torch.randn(n, n)
    out["float32"] = 2.0 * n ** 3 / _best_time(lambda: torch.mm(a, b), reps)
    m = max(n // 4, 64)
    a16, b16 = torch.randn(m, m).bfloat16(), torch.randn(m, m).bfloat16()
    small = 2.0 * m ** 3 / _best_time(lambda: torch.mm(a16, b16), reps)
    if small * 10 < out["float32"]:
        out["bfloat16"] = small
    else:
        a16, b16 = a.bfloat16(), b.bfloat16()
        out["bfloat16"] = 2.0 * n ** 3 / _best_time(lambda: torch.mm(a16, b16), reps)
    return out


def probe_stream(nbytes: int = 256 << 20, reps: int = 5) -> float:
    """Best-of-reps bytes/s of a copy larger than any last-level cache (read + write counted)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    return 2.0 * nbytes / _best_time(lambda: dst.copy_(src), reps)


def measure_cpu(matmul_n: int = 1024, stream_bytes: int = 256 << 20, reps: int = 5) -> Roofline:
    import platform

    mm = probe_matmul(matmul_n, reps)
    bw = probe_stream(stream_bytes, reps)
    peak = max(mm.values())
    name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return Roofline(name, {"bf16": peak, "fp8": peak}, bw, "measured",
                    f"measured at start: best of fp32/bf16 {matmul_n}^3 matmul, {stream_bytes >> 20} MiB copy; "
                    "no FP8 units, so fp8 math shares the matmul peak",
                    {"matmul_flops": mm, "stream_bytes_per_s": bw, "threads": torch.get_num_threads()})


def for_device(device: torch.device | str, override: str | None = None, **probe: Any) -> Roofline:
    """The roofline to judge ``device`` against: ``override`` names a table entry."""
    if override:
        return from_table(override)
    dev = torch.device(device)
    if dev.type == "cpu":
        return measure_cpu(**probe)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(getattr(torch, dev.type).get_device_name(dev.index or 0))
    entry = match(name)
    if entry is None:
        raise ConfigError(f"hardware: no hardware.yaml entry matches device '{name}'; pass --hardware NAME (one of {sorted(table())})")
    return from_table(entry)


def last_level_cache_bytes(device: torch.device | str) -> int:
    """LLC size, to decide whether inputs must be rotated or the cache flushed."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.get_device_properties(dev).L2_cache_size)
    if dev.type == "cpu":
        best = 0
        for idx in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
            try:
                s = (idx / "size").read_text().strip()
                best = max(best, int(s[:-1]) * {"K": 1 << 10, "M": 1 << 20}.get(s[-1], 1) if s[-1] in "KM" else int(s))
            except (OSError, ValueError):
                continue
        if best:
            return best
    log.info("no cache size known for %s: assuming 256 MiB", dev)
    return 256 << 20
