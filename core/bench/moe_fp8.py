"""MoE on FP8 expert weights: the grouped FP8 GEMMs against the dense-copy path the model used before, time and peak memory.

The grouped path is the model's own (``MoE.routed`` with ``moe="grouped"``:
act_quant, then the table's grouped FP8 GEMMs on the experts' FP8 weights as
stored, in the contiguous or the masked layout, whichever has fewer rows; the
layout that ran is reported). The dense-copy path is what the model did
before, kept here only: every expert's weights dequantized once into float
stacks [E, I, D] that stay resident, then one ``moe_experts`` call. Both run
on the same routing and inputs, are compared with each other (cosine), then
timed in alternation (best of the repeats, so a burst of load on a shared
machine hits both alike). Peak memory is measured per path in a fresh
process: the growth of its high-water resident set (VmHWM, reset through
/proc/self/clear_refs once the FP8 layer and the inputs exist) over building
what the path keeps and one call; on CUDA torch's peak allocated memory."""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from dataclasses import replace
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

DESCRIPTION = __doc__.splitlines()[0]
MIB = float(1 << 20)
PATHS = ("dense copy", "grouped fp8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--dim", type=int, default=1024, help="a multiple of 128")
    p.add_argument("--inter", type=int, default=512, help="moe_inter_dim, a multiple of 128")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory runs (two fresh processes)")


def _layer(opts: dict[str, Any]):  # noqa: ANN202 - (MoE layer, recorded op names)
    """A routed-experts layer with random FP8 expert weights (128x128 block scales), on a recording torch table."""
    from ..model.config import tiny_config
    from ..model.layers import MoE
    from ..registry import OpTable, resolve

    base, calls = resolve("torch"), []

    def recorded(name, fn):  # noqa: ANN001, ANN202
        def call(*a, **k):  # noqa: ANN002, ANN003, ANN202
            calls.append(name)
            return fn(*a, **k)
        return call

    ops = OpTable({n: recorded(n, f) for n, f in base.ops.items()}, dict(base.served_by), [])
    cfg = replace(tiny_config(dim=opts["dim"], moe_inter_dim=opts["inter"], n_routed_experts=opts["experts"],
                              n_activated_experts=opts["topk"], n_expert_groups=1, n_limited_groups=1), moe_grouped_gemm=True)
    moe = MoE(ops, cfg, torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for e in moe.experts:
            for lin in (e.gate_proj, e.up_proj, e.down_proj):
                n, k = lin.weight.shape
                lin.weight.copy_((torch.randn(n, k, generator=gen) * 64).clamp(-448, 448).to(lin.weight.dtype))
                lin.weight_scale_inv.copy_(torch.rand(lin.weight_scale_inv.shape, generator=gen) * 0.5 / (64 * k ** 0.5) + 0.75 / (64 * k ** 0.5))
    moe.to(opts["device"])
    t, e, top = opts["tokens"], opts["experts"], opts["topk"]
    x = torch.randn(t, opts["dim"], generator=gen).to(opts["device"])
    ids = torch.rand(t, e, generator=gen).topk(top, dim=-1).indices.to(torch.int32).to(opts["device"])
    w = (torch.rand(t, top, generator=gen) + 0.1).to(opts["device"])
    return moe, calls, (x, ids, w)


def _paths(moe) -> dict[str, Any]:  # noqa: ANN001
    """Per path: a function that builds what the path keeps and returns the call."""
    from ..model.layers import MoE

    def dense():  # noqa: ANN202 - the previous MoE.stacked: every expert dequantized, kept for every call
        w1, w3, w2 = (torch.stack([getattr(e, p).dense_weight() for e in moe.experts]) for p in MoE.PROJ)
        return lambda x, ids, w: moe.ops.moe_experts(x, ids, w, w1, w3, w2)

    def grouped():  # noqa: ANN202
        moe.stacked()  # the experts' own FP8 storage, stacked in place
        return moe.routed

    return {"dense copy": dense, "grouped fp8": grouped}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _peak(path: str, opts: dict[str, Any]) -> int:
    """Extra peak bytes of building the path and one call, in this (fresh) process."""
    if opts["threads"]:
        torch.set_num_threads(opts["threads"])
    moe, _, inputs = _layer(opts)
    with torch.inference_mode():
        if opts["device"].startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _paths(moe)[path]()(*inputs)
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - base
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS: setup's own peak is forgotten
            f.write("5")
        base = _status_kib("VmHWM")
        _paths(moe)[path]()(*inputs)
        return (_status_kib("VmHWM") - base) * 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    opts = {k: getattr(args, k) for k in ("tokens", "experts", "topk", "dim", "inter", "device", "threads")}
    moe, calls, inputs = _layer(opts)
    with torch.inference_mode():
        fns = {p: make() for p, make in _paths(moe).items()}
        outs = {}
        for p, fn in fns.items():
            calls.clear()
            outs[p] = fn(*inputs).double().cpu()
        layout = next(op.removeprefix("moe_grouped_fp8_gemm_") for op in calls if op.startswith("moe_grouped_fp8_gemm_"))
        cos = float(torch.nn.functional.cosine_similarity(outs["dense copy"].flatten(), outs["grouped fp8"].flatten(), dim=0))
        best = dict.fromkeys(PATHS, float("inf"))
        for _ in range(args.repeats):  # alternate: load bursts on a shared machine hit both paths
            for p, fn in fns.items():
                _sync(args.device)
                t0 = time.perf_counter()
                fn(*inputs)
                _sync(args.device)
                best[p] = min(best[p], time.perf_counter() - t0)
    peaks = dict.fromkeys(PATHS, float("nan"))
    ctx = mp.get_context("spawn")
    for p in () if args.no_peak else PATHS:
        with ctx.Pool(1) as pool:  # a fresh process per path: nothing cached from the other path
            peaks[p] = pool.apply(_peak, (p, opts))
    e, i, d = args.experts, args.inter, args.dim
    dense_copy_bytes = 3 * e * i * d * 4
    fp8_bytes = 3 * e * i * d + sum(lin.weight_scale_inv.numel() * 4 for ex in moe.experts
                                    for lin in (ex.gate_proj, ex.up_proj, ex.down_proj))
    speedup = best["dense copy"] / best["grouped fp8"]
    peak_ratio = peaks["dense copy"] / max(peaks["grouped fp8"], 1.0)
    table = Table(title=f"MoE routed experts on FP8 weights: T={args.tokens}, E={e}, top-{args.topk}, dim={d}, inter={i}, "
                        f"device={args.device}, {torch.get_num_threads()} threads")
    for c in ("path", "time (ms)", "extra peak MiB (build + one call)", "kept besides the FP8 weights (MiB)"):
        table.add_column(c)
    table.add_row("dense copy (dequantized stacks + moe_experts)", f"{best['dense copy'] * 1e3:.1f}",
                  f"{peaks['dense copy'] / MIB:.1f}", f"{dense_copy_bytes / MIB:.1f}")
    table.add_row(f"grouped FP8 ({layout} layout)", f"{best['grouped fp8'] * 1e3:.1f}", f"{peaks['grouped fp8'] / MIB:.1f}", "0")
    table.add_row("ratio dense / grouped", f"{speedup:.2f}x", f"{peak_ratio:.2f}x", "")
    table.add_row("FP8 expert weights + scales (MiB)", f"{fp8_bytes / MIB:.1f}", "", "")
    table.add_row("cosine grouped vs dense copy", f"{cos:.6f}", "(activations quantized to FP8 on the grouped path only)", "")
    Console().print(table)
    return {"benchmark": "moe_fp8", "device": args.device, "threads": torch.get_num_threads(), "tokens": args.tokens,
            "experts": e, "topk": args.topk, "dim": d, "inter": i, "layout": layout, "seconds": best,
            "speedup_dense_over_grouped": speedup, "extra_peak_bytes": peaks, "peak_ratio_dense_over_grouped": peak_ratio,
            "dense_copy_bytes": dense_copy_bytes, "fp8_weight_bytes": fp8_bytes, "cosine": cos}
