"""``dsport conformance``: every backend available here against the float64
reference, case by case; ``dsport conformance merge`` joins reports from
several machines into one matrix.

Exit status (also in ``--help``):

* 0: every check that was asked for ran, and none failed, crashed or timed out;
* 1: a case failed, crashed or timed out (this wins over 2: a failure is never hidden);
* 2: a usage or input error, which includes a run that checked nothing for
  something the user asked for: a ``--backend-module`` that does not import or
  has no ``OPS`` table, an ``available()`` that raises, a ``--cases`` pattern
  that matches no case, a backend named with ``--backends`` that is unavailable
  here (unless ``--allow-skip``), a ``--device`` torch does not know or this
  machine does not have, an unreadable report given to ``merge``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EPILOG = """exit status: 0 every requested check ran and passed (or was unsupported/skipped by declared limits);
1 a case failed, crashed or timed out; 2 usage or input error, including a run that checked nothing
for something you asked for (backend module that does not import or has no OPS, available() raising,
--cases matching nothing, a backend named in --backends that is unavailable here unless --allow-skip,
a --device torch does not know or this machine lacks, an unreadable report given to merge)"""


def _csv(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backends", nargs="+", metavar="NAME",
                   help="backends to run (comma or space separated); default: every registered backend except the reference itself")
    p.add_argument("--backend-module", action="append", default=[], metavar="DOTTED.PATH",
                   help="also run the backend defined by this importable module (out-of-tree or test backends); repeatable")
    p.add_argument("--ops", nargs="+", metavar="OP", help="only these ops (globs allowed, e.g. 'moe_*')")
    p.add_argument("--cases", nargs="+", metavar="ID",
                   help="only these case ids or op/id globs; selects regardless of --quick/--full")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="case_set", action="store_const", const="quick", help="the quick case set (default)")
    g.add_argument("--full", dest="case_set", action="store_const", const="full", help="every case, DeepSeek-sized ones included")
    p.set_defaults(case_set="quick")
    p.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="backends run at the same time, one worker process each; they share the reference outputs (default: 2 when there are 2 CPUs)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it is recorded as timeout (default 60)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report (schema: conformance/SCHEMA.md)")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML for CI systems")
    p.add_argument("--markdown", metavar="FILE", help="write a Markdown summary for a pull request")
    p.add_argument("--build", action="store_true", help="also build device code ahead of time (rows with verdict built); slow")
    p.add_argument("--targets", nargs="+", metavar="TARGET", help="build targets, e.g. sm_90a,gfx950 (implies --build; default: all a backend has)")
    p.add_argument("--build-dir", metavar="DIR", help="where build artifacts go (default: a temporary directory)")
    p.add_argument("--build-report", action="append", default=[], metavar="FILE",
                   help="include a build report written earlier by 'dsport build --json FILE'; repeatable")
    p.add_argument("--model", action="store_true",
                   help="model conformance instead of op cases: the V3.2 graph end to end per backend, every op call judged")
    p.add_argument("--checkpoint", metavar="DIR", help="with --model: a Hugging Face-format checkpoint (default: two tiny random ones, "
                                                       "V3.2 with the FP8 caches and a dense V3 with grouped-GEMM MoE)")
    p.add_argument("--prompt", type=int, metavar="N", help="with --model: prompt length (default: 4 x index_topk, so the "
                                                           "indexer's selection is sparse; 64 for dense configs)")
    p.add_argument("--allow-skip", action="store_true",
                   help="a backend named with --backends that is unavailable here is reported as skip and exits 0 "
                        "(default: it is an error, exit 2)")
    p.add_argument("--device", metavar="DEV",
                   help="run each backend's calls on this torch device (cuda, cuda:1, npu, cpu; ROCm GPUs are cuda): "
                        "inputs are generated and the reference runs on the CPU, inputs move there keeping their strides, "
                        "outputs come back to be judged; refused (exit 2) when this machine has no such device")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.epilog = EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sub = p.add_subparsers(dest="conformance_command")
    m = sub.add_parser("merge", help="merge JSON reports from several machines into one matrix",
                       description="merge JSON reports from several machines into one matrix; the same "
                                   "machine/backend/op/case in two reports keeps the newer report's row",
                       epilog="exit status: 0 nothing failed; 1 a merged case failed, crashed or timed out; "
                              "2 a report is unreadable (empty, truncated, binary, not a conformance report)")
    m.add_argument("reports", nargs="+", metavar="REPORT.json")
    m.add_argument("-o", "--json", dest="merge_json", metavar="FILE", help="write the merged JSON report")
    m.add_argument("--junit", dest="merge_junit", metavar="FILE")
    m.add_argument("--markdown", dest="merge_markdown", metavar="FILE")


def _write_outputs(doc: dict[str, Any], json_path: str | None, junit_path: str | None, md_path: str | None) -> None:
    from ...conformance import report

    if json_path:
        report.write_json(doc, json_path)
    if junit_path:
        with open(junit_path, "w") as f:
            f.write(report.junit_xml(doc))
    if md_path:
        with open(md_path, "w") as f:
            f.write(report.markdown(doc))


def _merge(args: argparse.Namespace) -> int:
    from ...conformance import report
    from ...conformance.merge import conflicts, load, merge

    from rich.console import Console

    doc = merge([load(p) for p in args.reports], args.reports)
    err = Console(stderr=True)
    for line in doc.get("superseded", []):
        err.print(f"[yellow]superseded:[/] {line}", highlight=False)
    for line in conflicts(doc):
        err.print(f"[yellow]machines disagree:[/] {line}", highlight=False)
    report.print_terminal(doc)
    _write_outputs(doc, args.merge_json, args.merge_junit, args.merge_markdown)
    return EXIT_OK if doc["summary"]["ok"] else EXIT_FAILED


def _default_backends() -> list[str]:
    from ..registry import BUILTIN_BACKENDS

    return [b for b in BUILTIN_BACKENDS if b != "reference"]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..errors import DsportError

    err = Console(stderr=True)
    try:
        if args.conformance_command == "merge":
            return _merge(args)
        return _run(args, err)
    except DsportError as e:
        err.print(f"[red]error:[/] {e}", highlight=False)
        return EXIT_USAGE


def _verdict(doc: dict[str, Any], problems: list[str], err: Any) -> int:
    """The exit status: failures first (never hidden), then what was asked for and not checked."""
    for line in problems:
        err.print(f"[red]not checked:[/] {line}", highlight=False)
    if not doc["summary"]["ok"]:
        return EXIT_FAILED
    return EXIT_USAGE if problems else EXIT_OK


def _run(args: argparse.Namespace, err: Any) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ...conformance import report
    from ...conformance.row import ResultRow
    from ...conformance.runner import ConformancePlan, check_module, load_build_reports, run, select_items, unchecked
    from ..errors import ConfigError

    device = None
    if args.device:  # before anything runs: an absent device is never a silent CPU run
        from ...conformance.device import resolve

        if args.model:
            raise ConfigError("--device: op conformance only; --model runs the graph on the CPU")
        device = resolve(args.device)
    targets = _csv(args.targets)
    named = _csv(args.backends) or []
    if named:
        from ..config import one_of, backend_names

        for b in named:
            one_of("--backends", b, backend_names())
    for m in args.backend_module:
        check_module(m)
    plan = ConformancePlan(backends=named or ([] if args.backend_module else _default_backends()),
                backend_modules=args.backend_module, ops=_csv(args.ops), case_set=args.case_set, cases=_csv(args.cases),
                timeout=args.timeout, build_targets=(targets or ["all"]) if (args.build or targets) else None,
                build_dir=args.build_dir, jobs=args.jobs, device=device)
    if args.model:
        from ...conformance.model import model_rows, model_unchecked

        command = shlex.join(["dsport", "conformance", *sys.argv[2:]]) if sys.argv[1:2] == ["conformance"] else "dsport conformance --model"
        if args.prompt is not None and args.prompt < 1:
            raise ConfigError(f"--prompt: expected a positive token count, got {args.prompt}")
        rows = model_rows(plan.backends, args.checkpoint, modules=plan.backend_modules, prompt_len=args.prompt)
        doc = report.build_document(rows, {}, command, "model")
        report.print_terminal(doc)
        _write_outputs(doc, args.json, args.junit, args.markdown)
        return _verdict(doc, model_unchecked(rows, set(named) | set(plan.backend_modules), args.allow_skip), err)
    items = select_items(plan)
    if args.list:
        for op, case, _ in items:
            print(f"{op}/{case}")
        return EXIT_OK
    n_backends = len(plan.backends) + len(plan.backend_modules)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=args.no_progress or not err.is_terminal) as progress:
        task = progress.add_task("conformance", total=len(items) * n_backends)

        def on_row(row: ResultRow) -> None:
            if row.metric != "build":
                progress.advance(task)
            progress.update(task, description=f"{row.backend} {row.op}")

        runs, rows = run(plan, on_row=on_row)
    command = shlex.join(["dsport", "conformance", *sys.argv[2:]]) if sys.argv[1:2] == ["conformance"] else "dsport conformance"
    doc = report.build_document(rows, runs, command, plan.case_set, extra_rows=load_build_reports(args.build_report),
                                run_device=device.to_json() if device else None)
    report.print_terminal(doc)
    _write_outputs(doc, args.json, args.junit, args.markdown)
    return _verdict(doc, unchecked(runs, rows, named, args.allow_skip), err)
