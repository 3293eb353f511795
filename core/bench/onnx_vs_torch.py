"""ONNX Runtime (the onnx backend, CPU execution provider) vs the torch backend, per op, one case each.

For every op the onnx backend serves, the first DeepSeek-shaped case of its
spec (else the case with the most input elements) runs on both backends with
the same arguments. Sessions are built by a warm-up call first (a one-off cost
per shape, reported apart); then the two backends are timed interleaved,
round after round, and the best time of each is kept, so load swings on a
shared host hit both alike. The ratio onnx / torch is measured within this
one run; absolute times belong to this machine only."""
from __future__ import annotations

import argparse
import fnmatch
import time
from collections.abc import Callable
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from ..spec import Case, specs

DESCRIPTION = __doc__.splitlines()[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", nargs="*", default=["*"], help="op names or globs (default: every op the onnx backend serves)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds; the best of each side is kept")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of both torch and ONNX Runtime (default 1: on a shared host a multi-thread "
                        "barrier stalls whenever one thread is descheduled, which swamps the ratio)")


def pick_case(op: str) -> Case:
    cases = specs()[op].cases()
    ds = [c for c in cases if "deepseek" in c.tags]
    if ds:
        return ds[0]

    def size(c: Case) -> int:
        return sum(v.numel() for v in c.inputs().values() if isinstance(v, torch.Tensor))
    return max(cases, key=size)


def _once(fn: Callable[..., Any], args: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    fn(**args)
    return time.perf_counter() - t0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ...backends import onnx as onnx_backend
    from ...backends import torch as torch_backend

    torch.set_num_threads(args.threads)  # ORT sessions take the same count (runtime.session_options)
    ok, why = onnx_backend.available()
    if not ok:
        raise SystemExit(f"dsport bench onnx_vs_torch: the onnx backend is not available: {why}")
    ops = [op for op in onnx_backend.OPS if any(fnmatch.fnmatch(op, pat) for pat in args.ops)]
    if not ops:
        raise SystemExit(f"dsport bench onnx_vs_torch: no op of the onnx backend matches {args.ops}")
    rows = []
    for op in ops:
        case = pick_case(op)
        a = case.inputs()
        o_fn, t_fn = onnx_backend.OPS[op], torch_backend.OPS[op]
        build = _once(o_fn, a)          # first call: graph, checker, session
        _once(t_fn, a)
        best_o = best_t = float("inf")
        for _ in range(max(args.rounds, 1)):
            best_t = min(best_t, _once(t_fn, a))
            best_o = min(best_o, _once(o_fn, a))
        rows.append({"op": op, "case": case.id, "torch_ms": best_t * 1e3, "onnx_ms": best_o * 1e3,
                     "onnx_over_torch": best_o / best_t, "onnx_first_call_ms": build * 1e3})
    table = Table(title=f"onnx (ONNX Runtime CPU) vs torch, {args.threads} thread(s), best of {args.rounds} interleaved rounds")
    for col in ("op", "case", "torch ms", "onnx ms", "onnx / torch", "onnx first call ms"):
        table.add_column(col, justify="left" if col in ("op", "case") else "right")
    for r in rows:
        table.add_row(r["op"], r["case"], f"{r['torch_ms']:.2f}", f"{r['onnx_ms']:.2f}", f"{r['onnx_over_torch']:.2f}",
                      f"{r['onnx_first_call_ms']:.0f}")
    Console().print(table)
    return {"rounds": args.rounds, "threads": args.threads, "rows": rows}
