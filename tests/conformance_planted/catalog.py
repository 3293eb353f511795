"""Which quick cases catch which planted porting bug: the table in README's
Conformance section is this module's output.

    PYTHONPATH=tests python -m conformance_planted.catalog [--markdown] [--bugs NAME ...]

Each bug of :mod:`.porting_bugs` (and each bug of the original
:mod:`.planted_bugs` module) is judged in-process by the conformance worker
on every quick case of its op; the bug-free control (the torch backend's op,
or the planted module with its bugs off) must pass every one of those cases.
Reference outputs are computed once per case and shared.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from collections.abc import Iterable
from dataclasses import dataclass, field

from dsport.backends import reference
from dsport.conformance.worker import run_case
from dsport.core.backend import from_module
from dsport.core.spec import specs

from . import porting_bugs

ORIGINAL = {  # the planted_bugs module: one bug per op family, described by its docstring
    op: f"planted_bugs.{op}" for op in ("act_quant", "dequant", "rope", "topk_select", "sparse_mla_prefill",
                                         "sparse_mla_decode", "mla_prefill_dense", "moe_gate")}


@dataclass
class Entry:
    name: str
    op: str
    kind: str
    what: str
    caught_by: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    not_pass: dict[str, str] = field(default_factory=dict)   # verdicts other than fail/pass (crash, skip, ...)
    control_failures: list[str] = field(default_factory=list)


def quick_cases(op: str) -> list[str]:
    return [c.id for c in specs()[op].cases() if "quick" in c.tags]


# where each kind of bug usually shows first: used only to order the cases of a --first run
LIKELY = {"poison": ("poison",), "layout": ("strided", "transposed", "non-contiguous"), "range": ("long", "fnuz", "skewed",
          "outlier", "tiny-rows", "fp32", "nonfinite", "context"), "inputs": ("tiny", "residual"), "aliasing": ("NB1",)}


def _ordered(cases: list[str], kind: str) -> list[str]:
    hints = LIKELY.get(kind, ())
    return sorted(cases, key=lambda c: (not any(h in c for h in hints), c.startswith("ds-")))


def judge_until(mod: types.ModuleType, op: str, cases: list[str], cache: str, first: int) -> dict[str, dict]:
    """Judge cases in order until ``first`` of them fail."""
    ref, rows, failed, backend = dict(reference.OPS), {}, 0, from_module(mod)
    for c in cases:
        rows[c] = run_case(backend, ref, op, c, ref_cache=cache, case_set="quick")
        failed += rows[c]["verdict"] == "fail"
        if failed >= first:
            break
    return rows


def _original_modules() -> tuple[types.ModuleType, types.ModuleType]:
    """planted_bugs with its bugs on, and the same code with them off (its control)."""
    import importlib

    os.environ.pop("DSPORT_PLANTED_CLEAN", None)
    buggy = importlib.import_module("conformance_planted.planted_bugs")
    os.environ["DSPORT_PLANTED_CLEAN"] = "1"
    spec = importlib.util.find_spec("conformance_planted.planted_bugs")
    clean = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(clean)
    os.environ.pop("DSPORT_PLANTED_CLEAN", None)
    return buggy, clean


def judge(mod: types.ModuleType, op: str, cases: Iterable[str], cache: str) -> dict[str, dict]:
    ref, backend = dict(reference.OPS), from_module(mod)
    return {c: run_case(backend, ref, op, c, ref_cache=cache, case_set="quick") for c in cases}


def catalog(names: list[str] | None = None, cache: str | None = None, original: bool = True,
            first: int | None = None) -> list[Entry]:
    """Judge every bug (or ``names``) on its op's quick cases. With ``first``, a bug's cases are judged
    only until that many fail, and its control only on those (a quicker check, not the table)."""
    cache = cache or tempfile.mkdtemp(prefix="dsport-planted-")
    entries: list[Entry] = []
    controls: dict[str, dict[str, dict]] = {}
    todo = [(n, b) for n, b in porting_bugs.BUGS.items() if not names or n in names]
    for name, b in todo:
        e = Entry(name, b.op, b.kind, b.what)
        if first:
            rows = judge_until(porting_bugs.backend(name), b.op, _ordered(quick_cases(b.op), b.kind), cache, first)
            caught = [c for c, r in rows.items() if r["verdict"] == "fail"]
            _fill(e, rows, judge(porting_bugs.control(b.op), b.op, caught, cache))
            entries.append(e)
            continue
        cases = quick_cases(b.op)
        rows = judge(porting_bugs.backend(name), b.op, cases, cache)
        if b.op not in controls:
            controls[b.op] = judge(porting_bugs.control(b.op), b.op, cases, cache)
        _fill(e, rows, controls[b.op])
        entries.append(e)
    if original and (not names or any(n in ORIGINAL.values() for n in names)):
        buggy, clean = _original_modules()
        for op, name in ORIGINAL.items():
            if names and name not in names:
                continue
            fn = buggy.OPS[op]
            e = Entry(name, op, "math", (fn.__doc__ or "").strip().removeprefix("Bug: ").rstrip("."))
            cases = quick_cases(op)
            if first:
                rows = judge_until(buggy, op, cases, cache, first)
                _fill(e, rows, judge(clean, op, [c for c, r in rows.items() if r["verdict"] == "fail"], cache))
            else:
                _fill(e, judge(buggy, op, cases, cache), judge(clean, op, cases, cache))
            entries.append(e)
    return entries


def _fill(e: Entry, rows: dict[str, dict], control: dict[str, dict]) -> None:
    for c, r in rows.items():
        if r["verdict"] == "fail":
            e.caught_by.append(c)
            e.reasons[c] = r["reason"]
        elif r["verdict"] != "pass":
            e.not_pass[c] = f"{r['verdict']}: {r['reason']}"
    e.control_failures = [f"{c}: {r['verdict']} {r['reason']}" for c, r in control.items() if r["verdict"] != "pass"]


def markdown(entries: list[Entry], width: int = 6) -> str:
    lines = ["| planted bug | op | kind | caught by (quick cases) | what the judge says (first case) |",
             "|---|---|---|---|---|"]
    for e in entries:
        shown = ", ".join(f"`{c}`" for c in e.caught_by[:width]) + (f" +{len(e.caught_by) - width}" if len(e.caught_by) > width else "")
        first = e.reasons[e.caught_by[0]] if e.caught_by else "NOT CAUGHT"
        first = first.split(";")[0].replace("|", "/")
        if len(first) > 90:
            first = first[:87] + "..."
        lines.append(f"| {e.what} (`{e.name}`) | `{e.op}` | {e.kind} | {len(e.caught_by)}: {shown} | {first} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m conformance_planted.catalog", description=__doc__.split("\n\n")[0])
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument("--bugs", nargs="*", help="only these bugs (names)")
    args = ap.parse_args(argv)
    entries = catalog(args.bugs)
    weak = [e for e in entries if len(e.caught_by) < 2 or e.control_failures]
    if args.markdown:
        print(markdown(entries))
    else:
        for e in entries:
            print(f"{e.name:45s} {e.op:28s} {len(e.caught_by):3d} caught: {', '.join(e.caught_by)}")
            for c, why in e.not_pass.items():
                print(f"    {c}: {why[:160]}")
            for c in e.control_failures:
                print(f"    CONTROL {c[:160]}")
    print(f"\n{len(entries)} planted bugs; {sum(len(e.caught_by) >= 2 for e in entries)} caught by >= 2 quick cases; "
          f"{sum(not e.control_failures for e in entries)} with a passing control", file=sys.stderr)
    return 1 if weak else 0


if __name__ == "__main__":
    sys.exit(main())
