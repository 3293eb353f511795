"""``dsport bench NAME``: run one benchmark module from dsport.core.bench."""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from .. import bench as bench_pkg


def benchmarks() -> dict[str, str]:
    return {m.name: f"dsport.core.bench.{m.name}" for m in pkgutil.iter_modules(bench_pkg.__path__)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help=f"one of: {', '.join(sorted(benchmarks())) or '(none yet)'}")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")


def run(args: argparse.Namespace) -> int:
    known = benchmarks()
    if args.name not in known:
        print(f"dsport bench: unknown benchmark {args.name!r}; available: {', '.join(sorted(known)) or '(none)'}", file=sys.stderr)
        return 2
    mod = importlib.import_module(known[args.name])
    parser = argparse.ArgumentParser(prog=f"dsport bench {args.name}", description=mod.DESCRIPTION)
    mod.add_arguments(parser)
    result = mod.run(parser.parse_args(args.rest))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    # a speed target missed is a figure to report; an accuracy check that failed makes the figures meaningless
    failed = result.get("failed_checks") if isinstance(result, dict) else None
    if failed:
        print(f"dsport bench {args.name}: accuracy check failed: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0
