"""``dsport build``: compile a backend's kernels ahead of time for one target
(no device needed) and report, per kernel, registers, spills, shared memory /
LDS and whether the expected matrix instruction appears. Every row is
``built`` or ``failed``: nothing here executed."""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ..build import KernelBuild
from ..errors import ConfigError, DsportError
from ..registry import load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", required=True, help="a backend with TARGETS and build(), e.g. triton or tilelang")
    p.add_argument("--target", required=True, help="e.g. sm_90a, gfx950, gfx942 (see the backend's TARGETS)")
    p.add_argument("--out", default=None, help="artifact directory (default: a temporary directory, kept)")
    p.add_argument("--json", default=None, help="also write the records as JSON to this file")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table instead of the rich table")


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


def _matrix(r: KernelBuild) -> str:
    if not r.matrix_instr:
        return "-"
    return f"{r.matrix_instr} {'yes' if r.matrix_found else 'NO' if r.matrix_found is False else '?'}"


def rows(records: list[KernelBuild]) -> list[list[str]]:
    return [[r.kernel, ",".join(r.ops), r.status, _num(r.registers), _num(r.spills), _num(r.shared_bytes), _matrix(r),
             "; ".join(r.findings + ([r.detail] if r.detail and r.status != "failed" else [])) or "-"] for r in records]


HEADER = ["kernel", "ops", "status", "regs", "spills (B NVIDIA / VGPRs AMD)", "shared/LDS B", "matrix instr", "findings"]


def markdown(records: list[KernelBuild]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(records)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except DsportError as e:
        Console(stderr=True).print(f"[red]error:[/] {e}")
        return 2


def _run(args: argparse.Namespace) -> int:
    mod = load_backend(args.backend)
    targets = mod.targets
    if not mod.can_build:
        raise ConfigError(f"backend: '{args.backend}' has no ahead-of-time build (no TARGETS/build())")
    if args.target not in targets:
        raise ConfigError(f"target: '{args.target}' is not a target of backend '{args.backend}'; valid: {list(targets)}")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix=f"dsport-build-{args.backend}-{args.target}-"))
    records = mod.build(args.target, out)
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_json() for r in records], indent=2, default=str))
    console = Console()
    if args.markdown:
        print(markdown(records))
    else:
        table = Table(*HEADER, title=f"{args.backend} -> {args.target} (built, not executed: no such device here)")
        for row in rows(records):
            table.add_row(*row)
        console.print(table)
    n_built = sum(r.status == "built" for r in records)
    n_failed = sum(r.status == "failed" for r in records)
    n_source = sum(r.status == "source" for r in records)
    n_find = sum(bool(r.findings) for r in records if r.status == "built")
    console.print(f"{n_built} built, {n_failed} failed, {n_source} source only (toolchain not here), {n_find} with findings; "
                  f"artifacts in {out}")
    return 1 if n_failed else 0
