"""Call overhead of the OpTable: ``table.op(...)`` against calling the same
implementation directly, for a cheap op on a tiny tensor.

With ``validate=False`` the table attribute *is* the implementation, so the
only cost is one instance-attribute load; with ``validate=True`` each call
binds and checks its arguments against the spec. The three variants are
timed interleaved, round after round, and the best per-call time of each is
reported, so machine noise hits all of them alike. A do-nothing
implementation is timed the same way: there the table's own cost is all
there is to see.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from .. import library
from ..registry import OpTable, resolve
from ..spec import get_spec

DESCRIPTION = "per-call overhead (ns) of OpTable dispatch vs a direct call of the same implementation"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="reference", help="backend whose implementation is timed")
    p.add_argument("--calls", type=int, default=3000, help="calls per round")
    p.add_argument("--rounds", type=int, default=20)


OP = "dequant"  # the cheapest op of the reference: one multiply on 128 elements


def _per_call_ns(fn: Callable[..., Any], args: tuple, kwargs: dict, calls: int) -> float:
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        fn(*args, **kwargs)
    return (time.perf_counter_ns() - t0) / calls


def _null_dequant(y: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    return y


def _measure(impl: Callable[..., Any], raw: Any, checked: Any, lib: Any, a: tuple, calls: int, rounds: int) -> dict[str, float]:
    # Closures of one shape, so the loop and closure cost is shared: direct
    # holds the function in a cell, the tables load it as user code does.
    variants: dict[str, Callable[..., Any]] = {
        "direct": lambda *x: impl(*x),
        "table(validate=False)": lambda *x: raw.dequant(*x),
        "table(validate=True)": lambda *x: checked.dequant(*x),
        "torch.ops.dsport (validate=False)": lambda *x: lib.dequant(*x),
    }
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        _per_call_ns(fn, a, {}, max(calls // 10, 1))
    for _ in range(rounds):
        for name, fn in variants.items():
            samples[name].append(_per_call_ns(fn, a, {}, calls))
    # The minimum over rounds: on a shared machine noise only ever adds time.
    return {k: min(v) for k, v in samples.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    sel = {"backend": args.backend, "fallback": "fallback", "fallback_chain": []}
    raw = resolve(sel, validate=False)
    checked = resolve(sel, validate=True)
    a = (torch.ones(1, 128).to(torch.float8_e4m3fn), torch.ones(1, 1))
    spec = get_spec(OP)
    # A do-nothing implementation bound the way resolve() binds: its timings
    # are the table's own cost with nothing to hide behind.
    null_raw = OpTable({OP: _null_dequant}, {OP: "null"}, [])
    null_checked = OpTable({OP: spec.checked(_null_dequant)}, {OP: "null"}, [])
    # Through torch.ops the output is checked for dtype and aliasing, so the
    # do-nothing kernel returns a ready float32 tensor that is not an input.
    ready = torch.empty(1, 128)
    null_float = lambda y, s, block=128: ready  # noqa: E731
    result: dict[str, Any] = {"op": OP, "shape": [1, 128], "calls": args.calls, "rounds": args.rounds,
                              "torch": torch.__version__, "threads": torch.get_num_threads(), "estimator": "min over rounds"}
    for label, impl, r, c in ((f"{args.backend}.{OP}", raw.ops[OP], raw, checked), (f"null {OP}", _null_dequant, null_raw, null_checked)):
        # The custom-op path: the dispatcher, then the same implementation.
        lib = library.register(OpTable({OP: impl if impl is not _null_dequant else null_float}, {OP: label}, []))
        best = _measure(impl, r, c, lib, a, args.calls, args.rounds)
        result[label] = {"ns_per_call": {k: round(v, 1) for k, v in best.items()},
                         "overhead_ns": {k: round(v - best["direct"], 1) for k, v in best.items() if k != "direct"}}
        print(f"{label} on a [1, 128] fp8 tensor: best of {args.rounds} rounds x {args.calls} calls")
        print(f"  {'variant':<36}{'ns/call':>10}{'overhead ns':>14}")
        for k, v in best.items():
            over = "" if k == "direct" else f"{v - best['direct']:>14.0f}"
            print(f"  {k:<36}{v:>10.0f}{over}")
    return result
