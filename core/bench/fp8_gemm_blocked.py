"""fp8_gemm on the torch backend: the blocked FP8 GEMM against the dequantize-everything baseline, at the profile's shapes.

The shapes are the profiler's (``dsport profile``): DeepSeek-V3.2's wq_a
projection (N = q_lora_rank 1536, K = dim 7168) for one prefill chunk and one
decode batch of the chosen :class:`~dsport.core.profile.shapes.Scale`. Both
paths get the same inputs; each is first compared with the float64 reference
(the conformance ``close`` metric), then timed in alternation (best of the
repeats, so a burst of load on a shared machine hits both alike). Peak extra
memory is measured per path in a fresh process: the growth of its high-water
resident set (VmHWM, reset through /proc/self/clear_refs once the inputs
exist) over the call; on CUDA torch's peak allocated memory.

The baseline is the torch backend's previous ``fp8_gemm``, kept here only:
both operands dequantized whole to fp32 (the weight through a repeated
[N, K] scale map) and one fp32 GEMM."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..profile import shapes

DESCRIPTION = __doc__.splitlines()[0]
TARGET = 5.0
MIB = float(1 << 20)
SCALES = {"cpu": shapes.CPU, "device": shapes.DEVICE}


def dense_baseline(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """The previous torch ``fp8_gemm``: dequantize a and the whole weight, one fp32 GEMM."""
    m, k = a.shape
    n = b.shape[0]
    a32 = (a.float().reshape(m, k // 128, 128) * sa.unsqueeze(-1)).reshape(m, k)
    full = sb.repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
    return (a32 @ (b.float() * full).t()).to(torch.bfloat16)


def blocked(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    from ...backends.torch.quant import fp8_gemm

    return fp8_gemm(a, sa, b, sb)


PATHS: dict[str, Callable[..., torch.Tensor]] = {"dense baseline": dense_baseline, "blocked": blocked}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scale", choices=sorted(SCALES), default="cpu", help="the profile scale whose token counts are used")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _inputs(scale: str, phase: str, device: str) -> dict[str, torch.Tensor]:
    make = shapes.fp8_gemm(SCALES[scale], phase)
    return {k: v.to(device) for k, v in make(torch.Generator().manual_seed(0)).items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak(path: str, scale: str, phase: str, device: str, threads: int) -> int:
    """Extra peak bytes of one call, measured in this (fresh) process."""
    torch.set_num_threads(threads)
    args = _inputs(scale, phase, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        PATHS[path](**args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS: setup's own peak is forgotten
        f.write("5")
    base = _status_kib("VmHWM")
    PATHS[path](**args)
    return (_status_kib("VmHWM") - base) * 1024


def _accuracy(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.double().flatten(), ref.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(o, r, dim=0))
    return cos, float((o - r).abs().max() / r.abs().max().clamp_min(1e-30))


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ...backends.reference.quant import fp8_gemm as reference
    from ...conformance.tolerances import tolerance

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ctx = mp.get_context("spawn")
    rows, results, failed = [], [], []
    for phase in shapes.PHASES:
        inp = _inputs(args.scale, phase, args.device)
        m, k = inp["a"].shape
        n = inp["b"].shape[0]
        ref = reference(**{key: v.cpu() for key, v in inp.items()})
        tol = tolerance("fp8_gemm", None, torch.bfloat16, "e4m3fn", k)
        acc = {p: _accuracy(fn(**inp).cpu(), ref) for p, fn in PATHS.items()}
        best = dict.fromkeys(PATHS, float("inf"))
        for _ in range(args.repeats):  # alternate: load bursts on a shared machine hit both paths
            for p, fn in PATHS.items():
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn(**inp)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                best[p] = min(best[p], time.perf_counter() - t0)
        peaks = {}
        for p in PATHS:
            with ctx.Pool(1) as pool:  # a fresh process per path: nothing cached from the other path
                peaks[p] = pool.apply(_peak, (p, args.scale, phase, args.device, torch.get_num_threads()))
        speedup = best["dense baseline"] / best["blocked"]
        ok = all(c >= tol.cos_min and e <= tol.peak_rel for c, e in acc.values())
        if not ok:
            failed.append(f"{phase}: (cosine, peak-relative error) per path {acc} outside the fp8_gemm bound "
                          f"(cosine >= {tol.cos_min:.6f}, error <= {tol.peak_rel:.3g})")
        verdict = "pass" if speedup >= TARGET and ok else "miss"
        r = {"phase": phase, "M": m, "N": n, "K": k, "seconds": best, "speedup": speedup,
             "extra_peak_bytes": peaks, "accuracy": {p: {"cosine": c, "peak_rel": e} for p, (c, e) in acc.items()},
             "tolerance": {"min_cosine": tol.cos_min, "max_peak_rel": tol.peak_rel}, "verdict": verdict}
        results.append(r)
        weight_mib = n * k * 4 / MIB
        rows.append((phase, f"{m}x{n}x{k}", f"{best['dense baseline'] * 1e3:.1f}", f"{best['blocked'] * 1e3:.1f}",
                     f"{speedup:.1f}x", f"{peaks['dense baseline'] / MIB:.1f} / {peaks['blocked'] / MIB:.1f}",
                     f"{weight_mib:.0f}", f"{acc['dense baseline'][0]:.6f} / {acc['blocked'][0]:.6f}", verdict))
    table = Table(title=f"fp8_gemm blocked vs dense baseline (torch backend), profile scale {args.scale!r}, "
                        f"device={dev}, {torch.get_num_threads()} threads")
    for c in ("phase", "MxNxK", "baseline ms", "blocked ms", "speedup", "extra peak MiB base/blocked",
              "fp32 weight MiB", "cosine vs ref base/blocked", f">= {TARGET:g}x"):
        table.add_column(c)
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    return {"benchmark": "fp8_gemm_blocked", "scale": args.scale, "device": str(dev), "threads": torch.get_num_threads(),
            "target_speedup": TARGET, "results": results, **({"failed_checks": failed} if failed else {})}
