"""``dsport ops``: the op catalogue, printed from the op specs themselves
(signature, outputs, metric family, source) — the docs never restate them."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..spec import REQUIRED, OpSpec, Param, Tensor, specs


def _arg(a: Tensor | Param) -> str:
    if isinstance(a, Tensor):
        shape = "[" + ", ".join("..." if d == "*" else str(d) for d in a.shape) + "]"
        return f"{a.name}{'?' if a.optional else ''} {shape}"
    return a.name if a.default is REQUIRED else f"{a.name}={a.default!r}"


def signature(spec: OpSpec) -> str:
    return f"{spec.name}(" + ", ".join(_arg(a) for a in spec.args) + ")"


def outputs(spec: OpSpec) -> str:
    outs = [f"{o.name} [" + ", ".join("..." if d == "*" else str(d) for d in o.shape) + "]" + (f" (with {o.when})" if o.when else "")
            for o in spec.outputs]
    return ", ".join(outs)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (for the README)")


def run(args: argparse.Namespace) -> int:
    rows = [(s.family, signature(s), outputs(s), s.metric, str(len(s.cases()))) for s in specs().values()]
    if args.markdown:
        print("| family | op | returns | metric | cases |\n|---|---|---|---|---|")
        for fam, sig, out, metric, n in rows:
            print(f"| {fam} | `{sig}` | {out} | {metric} | {n} |")
        return 0
    table = Table("family", "op", "returns", "metric", "cases")
    for r in rows:
        table.add_row(*r)
    Console().print(table)
    return 0
