"""``dsport selfcheck``: run the reference backend on every case of every op
and check that it honours its own spec (output count, shapes and dtypes)."""
from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table

from dsport.core.registry import resolve
from dsport.core.spec import specs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ops", nargs="*", help="only these ops")


def check_case(spec, fn, case) -> str:
    """'' when the reference output matches the spec, else what is wrong."""
    args = case.inputs()
    bound = spec.bind(**args)
    dims = spec.validate(bound)
    out = fn(**args)
    outs = out if isinstance(out, tuple) else (out,)
    want = spec.output_shapes(bound, dims)
    if len(outs) != len(want):
        return f"{len(outs)} outputs, spec says {len(want)}"
    for o, shape in zip(outs, want):
        if tuple(o.shape) != shape:
            return f"output shape {tuple(o.shape)}, spec says {shape}"
    # -inf is a legitimate value (lse of a row with no valid key), so only an
    # op whose every float output is entirely non-finite is suspicious
    floats = [o for o in outs if o.is_floating_point() and o.element_size() > 1 and o.numel()]
    if floats and not any(torch.isfinite(o).any() for o in floats):
        return "no finite output value"
    return ""


def run(args: argparse.Namespace) -> int:
    table_ops = resolve("reference", validate=False).ops
    report = Table("op", "cases", "result")
    bad = 0
    for name, spec in specs().items():
        if args.ops and name not in args.ops:
            continue
        cases = spec.cases()
        problems = [f"{c.id}: {msg}" for c in cases if (msg := check_case(spec, table_ops[name], c))]
        bad += bool(problems) or not cases
        result = "[red]" + "; ".join(problems) + "[/]" if problems else ("[green]ok[/]" if cases else "[yellow]no cases[/]")
        report.add_row(name, str(len(cases)), result)
    Console().print(report)
    return 1 if bad else 0
