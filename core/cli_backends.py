"""``dsport backends``: every known backend, whether it runs here, and why."""
from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from dsport.core.registry import BUILTIN_BACKENDS, load_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    table = Table("backend", "available", "ops", "reason")
    for name in BUILTIN_BACKENDS:
        try:
            mod = load_backend(name)
            ok, reason = mod.available()
            n = str(len(mod.OPS))
        except Exception as e:  # a broken backend is reported, never fatal
            ok, reason, n = False, f"import failed: {type(e).__name__}: {e}", "-"
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", n, reason)
    Console().print(table)
    return 0
