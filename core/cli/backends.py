"""``dsport backends``: every known backend (built-in and plugin), whether it
runs here, and why. ``--explain`` resolves a config and prints, per op, what
serves it and why each other candidate was rejected. ``--contract`` prints
the backend contract (every hook a backend module may define) as Markdown."""
from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..backend import BackendModule
from ..config import add_config_arguments, config_from_args
from ..errors import ConfigError
from ..registry import discover, load, plan


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--explain", action="store_true", help="per op: which backend serves it and why the others were rejected")
    p.add_argument("--contract", action="store_true", help="print the backend contract (every hook, its default, its meaning) as Markdown")
    add_config_arguments(p)


def list_backends(console: Console) -> None:
    sources = discover()
    table = Table("backend", "origin", "available", "ops", "reason")
    for name, src in sources.items():
        b = load(name, sources)
        n = str(len(b.ops)) if b.module is not None else "-"
        reason = b.reason + "".join(f"; ignored same-name {s}" for s in src.shadows)
        table.add_row(name, src.origin, "[green]yes[/]" if b.ok else "[red]no[/]", n, escape(reason))
    console.print(table)


def explain(console: Console, args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    p = plan(cfg)
    console.print(f"config ({escape(cfg.origin)}): {escape(str(cfg.to_mapping()))}")
    # a backend that loads but cannot run here still says what it would do on its own hardware
    idle = [b for b in p.backends.values() if not b.ok and b.module is not None]
    table = Table("op", "served by", "how", "other candidates", *(["where available"] if idle else []))
    query = cfg.query()
    for o in p.ops.values():
        others = []
        for v in o.verdicts:
            if v.backend == o.served_by:
                continue
            if cfg.fallback == "strict" and v is not o.verdicts[0]:
                others.append(f"{v.backend}: not consulted (strict)")
            elif v.ok:
                others.append(f"{v.backend}: able, lower in the chain")
            else:
                others.append(f"{v.backend}: {'; '.join(v.reasons)}")
        served = o.served_by or "[red]none[/]"
        where = [f"{b.name}: {_would(b.module, o.op, query)}" for b in idle if b.name in {v.backend for v in o.verdicts}]
        table.add_row(o.op, served, o.role, escape(" | ".join(others)), *([escape(" | ".join(where))] if idle else []))
    console.print(table)
    failures = p.failures
    if failures:
        verdict = "resolve() would fail" if cfg.fallback == "strict" else "these ops would be absent from the table"
        console.print(f"[red]{len(failures)} op(s) not served[/]: {', '.join(o.op for o in failures)} ({verdict})")
    return 1 if failures and cfg.fallback == "strict" else 0


def _would(mod: BackendModule, op: str, query: dict) -> str:
    """What an unavailable backend would do with ``op`` where it is available."""
    if op in mod.ops:
        cap = mod.capabilities.get(op)
        via = f" via {cap.note}" if cap is not None and cap.note else ""
        refused = mod.refusal(op, query)
        return f"would serve it{via}" + (f", but not this config: {'; '.join(refused)}" if refused else "")
    if op in mod.not_served:
        return f"leaves it to the chain: {mod.not_served[op]}"
    return "does not implement it"


def run(args: argparse.Namespace) -> int:
    # A pipe or a test has no terminal width; wide enough that reasons stay on one line.
    console = Console() if sys.stdout.isatty() else Console(width=240)
    try:
        if args.contract:
            from ..backend import contract_markdown

            print(contract_markdown())
            return 0
        if args.explain:
            return explain(console, args)
        list_backends(console)
    except ConfigError as e:
        print(f"dsport backends: {e}", file=sys.stderr)
        return 2
    return 0
