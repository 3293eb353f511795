"""Run backends x ops x cases, each backend in its own subprocess.

A worker (:mod:`dsport.conformance.worker`, spawned through
:mod:`dsport.conformance.process`) announces every case before it runs it. When the worker dies, the announced case is recorded as ``crash``
(with the signal or exit code and the tail of its stderr); when no result
comes within the timeout, the worker is killed and the case is recorded as
``timeout``. Either way a fresh worker picks up the remaining cases, so one
segfault or hang never ends the run.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import fnmatch
import importlib.util
import json
import logging
import os
import queue
import shlex
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .process import Worker
from .row import Item, ResultRow

if TYPE_CHECKING:
    from .device import RunDevice

log = logging.getLogger(__name__)

VERDICTS = ("pass", "fail", "contract", "built", "skip", "unsupported", "crash", "timeout")
FAILING = ("fail", "crash", "timeout")
# verdicts of a case that something actually executed or compiled; skip and unsupported checked nothing
EXECUTED = ("pass", "fail", "crash", "timeout", "built", "contract")


@dataclass
class ConformancePlan:
    """What to run. ``backends`` are registry names; ``backend_modules`` are
    dotted module paths of extra backends (out-of-tree or test backends)."""

    backends: list[str] = field(default_factory=list)
    backend_modules: list[str] = field(default_factory=list)
    ops: list[str] | None = None
    case_set: str = "quick"
    cases: list[str] | None = None        # id patterns; when given, they select regardless of the set
    timeout: float = 60.0                 # per case, seconds
    load_timeout: float = 180.0           # importing a backend (Triton, TileLang) can be slow
    build_targets: list[str] | None = None
    build_dir: str | None = None
    build_timeout: float = 600.0
    jobs: int = 1                         # backends run at the same time, one worker each
    ref_cache: str | None = None          # reference outputs shared by the run's workers (default: a temp dir)
    device: RunDevice | None = None       # where backends' calls run (inputs moved there); None: the CPU, unmoved


def select_items(plan: ConformancePlan) -> list[Item]:
    """(op, case id, seed) items in spec order, filtered by op, set and id patterns: the
    cases are built here, once per run, and the job carries what a row of each needs."""
    from ..core.errors import ConfigError
    from ..core.spec import specs

    table = specs()
    unknown = [o for o in plan.ops or [] if o not in table and not any(fnmatch.fnmatch(n, o) for n in table)]
    if unknown:
        raise ConfigError(f"--ops: unknown op(s) {unknown}; valid: {sorted(table)}")
    items, ids, used = [], set(), set()
    for name, spec in table.items():
        if plan.ops and not any(fnmatch.fnmatchcase(name, p) for p in plan.ops):
            continue
        cases = spec.cases()
        if not cases:
            log.warning("op %s has no cases in its spec: it is not checked", name)
        for c in cases:
            ids.add(c.id)
            if plan.cases:
                hit = [p for p in plan.cases if fnmatch.fnmatchcase(c.id, p) or fnmatch.fnmatchcase(f"{name}/{c.id}", p)]
                used.update(hit)
                if hit:
                    items.append(Item(name, c.id, c.seed))
            elif plan.case_set in c.tags:
                items.append(Item(name, c.id, c.seed))
    unmatched = [p for p in plan.cases or [] if p not in used]
    if unmatched:
        hints = [f"{p!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(p.rpartition("/")[2], ids, n=1))
                 else repr(p) for p in unmatched]
        scope = f" of the ops {plan.ops}" if plan.ops else ""
        raise ConfigError(f"--cases: {', '.join(hints)} matches no case{scope}; valid case ids: {sorted(ids)}")
    if not items:
        raise ConfigError(f"nothing selected: no case of the {plan.case_set} set{f' for the ops {plan.ops}' if plan.ops else ''}"
                          " (--full or --cases selects more)")
    return items


@dataclass
class BackendRun:
    label: str
    available: bool | None = None
    reason: str = ""
    ops: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    module: str | None = None
    broken: bool = False                  # failed to import (not a missing dependency) or available() raised
    load_verdict: str | None = None       # crash or timeout when the worker never said it was ready

    def loaded(self, ready: dict[str, Any]) -> bool:
        """Take what the worker's ``ready`` event says; whether the backend's cases can run."""
        self.available, self.reason = bool(ready.get("available")), ready.get("reason", "")
        self.ops, self.targets, self.env = ready.get("ops", []), ready.get("targets", []), ready.get("env", {})
        self.load_verdict = ready.get("verdict")
        # a module that imports but cannot import a name it needs is broken; a missing package is a missing dependency
        half_imported = self.module is not None and self.reason.startswith("import failed: ImportError")
        self.broken = bool(ready.get("broken")) or half_imported or self.load_verdict in ("crash", "timeout")
        if self.module and ready.get("name"):
            self.label = ready["name"]
        return self.available


def as_item(item: Item | tuple[str, str]) -> Item:
    """An (op, case) pair as a job item (the seed from its spec); a full item as it is."""
    if isinstance(item, Item):
        return item
    from .worker import case_of

    op, case = item
    return Item(op, case, case_of(op, case).seed)


def run_backend(label: str, module: str | None, items: Sequence[Item | tuple[str, str]], plan: ConformancePlan,
                on_row: Callable[[ResultRow], None] = lambda r: None,
                build_targets: Sequence[str] | None = None) -> tuple[BackendRun, list[ResultRow]]:
    """All cases of one backend (or its builds); a fresh worker takes the rest after a crash or hang."""
    info = BackendRun(label, module=module)
    rows: list[ResultRow] = []

    def add(row: ResultRow) -> None:
        row = row.placed(info.label, module)
        if plan.device is not None and not row.is_build:  # a crash or timeout row gets the device it was meant for
            row = dataclasses.replace(row, run_device=row.run_device or plan.device.to_json(),
                                      reproduce=f"{row.reproduce} --device {shlex.quote(plan.device.torch)}")
        rows.append(row)
        on_row(rows[-1])

    remaining = [Item("(build)", t) for t in build_targets] if build_targets else [as_item(i) for i in items]
    while remaining:
        with Worker("dsport.conformance.worker", _job(label, module, remaining, plan, build_targets)) as w:
            if not info.loaded(_ready(w, plan.load_timeout)):
                # unavailable here (a missing dependency, no device) is a skip; a backend that cannot even load is not
                verdict = info.load_verdict or ("crash" if info.broken else "skip")
                why = f"backend unavailable: {info.reason}" if verdict == "skip" else f"backend failed to load: {info.reason}"
                for item in remaining:
                    add(ResultRow.lost(item, verdict, why))
                break
            remaining = _drain(w, remaining, plan.build_timeout if build_targets else plan.timeout, plan.load_timeout, add)
    return info, rows


def _job(label: str, module: str | None, items: list[Item], plan: ConformancePlan,
         build_targets: Sequence[str] | None) -> dict[str, Any]:
    job = {"backend": label, "backend_module": module, "items": items, "ref_cache": plan.ref_cache,
           "case_set": None if plan.cases else plan.case_set, "device": plan.device.torch if plan.device else None}
    if build_targets:
        job = {**job, "items": [], "build": {"targets": [it.case for it in items],
                                             "out_dir": plan.build_dir or tempfile.mkdtemp(prefix="dsport-build-")}}
    return job


def _ready(w: Worker, timeout: float) -> dict[str, Any]:
    """The worker's ``ready`` event, or one standing for its failure to send it."""
    try:
        ready = w.next(timeout)
    except queue.Empty:
        return {"event": "ready", "available": False, "verdict": "timeout",
                "reason": f"backend import did not finish within {timeout:.0f} s"}
    if ready is None:
        return {"event": "ready", "available": False, "verdict": "crash", "reason": f"backend worker died while loading: {w.died()}"}
    return ready


def _drain(w: Worker, items: list[Item], case_timeout: float, idle_timeout: float,
           add: Callable[[ResultRow], None]) -> list[Item]:
    """Rows of ``items`` from one worker until it is done (returns []) or dies or hangs
    on a case (that case is a crash or timeout row; returns the items after it)."""
    index = {(it.op, it.case): i for i, it in enumerate(items)}
    first, in_flight, started = 0, None, time.monotonic()  # first: the first item without a row
    while True:
        try:
            ev = w.next(case_timeout if in_flight is not None else idle_timeout)
        except queue.Empty:
            if in_flight is None:
                raise
            add(ResultRow.lost(items[in_flight], "timeout", f"no result within {case_timeout:g} s; worker killed",
                               time.monotonic() - started))
            return items[in_flight + 1:]
        if ev is None:
            if in_flight is None:
                why = f"worker ended before this case: {w.died()}"
                for item in items[first:]:
                    add(ResultRow.lost(item, "crash", why))
                return []
            add(ResultRow.lost(items[in_flight], "crash", w.died(), time.monotonic() - started))
            return items[in_flight + 1:]
        if ev.get("event") == "start":
            in_flight, started = index[(ev["op"], ev["case"])], time.monotonic()
        elif ev.get("event") == "result":
            for row in ev["rows"]:
                add(ResultRow.from_json(row))
            if in_flight is not None:
                first, in_flight = in_flight + 1, None
        elif ev.get("event") == "done":
            return []


def run(plan: ConformancePlan, on_row: Callable[[ResultRow], None] = lambda r: None,
        on_backend: Callable[[str, int], None] = lambda name, n: None) -> tuple[dict[str, BackendRun], list[ResultRow]]:
    """Every selected backend over the selected cases; returns availability and result rows."""
    items = select_items(plan)
    targets: list[tuple[str, str | None]] = [(b, None) for b in plan.backends] + [(m.rsplit(".", 1)[-1], m) for m in plan.backend_modules]
    with tempfile.TemporaryDirectory(prefix="dsport-ref-") as tmp:
        plan = dataclasses.replace(plan, ref_cache=plan.ref_cache or tmp)
        lock = threading.Lock()

        def locked(row: ResultRow) -> None:
            with lock:
                on_row(row)

        with ThreadPoolExecutor(max_workers=max(1, plan.jobs)) as pool:
            done = list(pool.map(lambda t: _one_backend(t[0], t[1], items, plan, locked, on_backend), targets))
    runs: dict[str, BackendRun] = {}
    rows: list[ResultRow] = []
    for info, got in done:  # in the order asked for, whatever order they finished in
        runs[info.label] = info
        rows += got
    return runs, rows


def _one_backend(label: str, module: str | None, items: list[Item], plan: ConformancePlan,
                 on_row: Callable[[ResultRow], None], on_backend: Callable[[str, int], None]) -> tuple[BackendRun, list[ResultRow]]:
    on_backend(label, len(items))
    info, got = run_backend(label, module, items, plan, on_row)
    if plan.build_targets and info.targets:  # builds need no device, only the backend's toolchain
        want = [t for t in plan.build_targets if t in info.targets or t == "all"]
        if "all" in want:
            want = list(info.targets)
        for t in plan.build_targets:
            if t != "all" and t not in info.targets:
                log.info("backend %s has no build target %s", label, t)
        if want:
            _, built = run_backend(label, module, [], plan, on_row, build_targets=want)
            # a build compiles every kernel of the target; --ops narrows what is reported
            got += [r for r in built if not plan.ops or any(fnmatch.fnmatchcase(o, p) for o in r.ops or [r.op] for p in plan.ops)]
    return info, got


def load_build_reports(paths: Iterable[str]) -> list[ResultRow]:
    """Rows from build reports written earlier (``dsport build --json F``: a list of KernelBuild.to_json())."""
    rows = []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        for kb in data if isinstance(data, list) else data.get("builds", []):
            backend = kb.get("backend") or "?"
            rows.append(dataclasses.replace(
                ResultRow.build(kb), backend=backend, source=os.path.abspath(p),
                reproduce=shlex.join(["dsport", "build", "--backend", backend, "--target", kb["target"]])))
    return rows


def check_module(module: str) -> None:
    """Fail fast, before any worker starts, on a ``--backend-module`` that
    cannot be found (a typo) or whose source lacks a required hook (a
    misspelt ``OPS``). Reads the source without executing it: this process
    must not import a backend (its ``ENV`` is applied only in the worker, and
    an import may be slow or crash), so the contract loader cannot be asked
    yet; the message is the loader's own (:func:`dsport.core.backend.missing_hook`).
    Import errors inside the module are the worker's to report, with their
    traceback's last line."""
    from ..core.backend import missing_hook
    from ..core.errors import ConfigError

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:  # a parent package is missing or fails to import
        raise ConfigError(f"--backend-module {module}: cannot be imported: {type(e).__name__}: {e}") from None
    if spec is None:
        parent, _, leaf = module.rpartition(".")
        near = []
        if parent:
            try:
                pspec = importlib.util.find_spec(parent)
                locs = list(pspec.submodule_search_locations or []) if pspec else []
                near = difflib.get_close_matches(leaf, [p.rsplit(".", 1)[0] for loc in locs for p in os.listdir(loc)], n=1)
            except (ImportError, OSError, ValueError):
                pass
        hint = f" (did you mean '{parent}.{near[0]}'?)" if near else ""
        raise ConfigError(f"--backend-module {module}: no module of that name on sys.path{hint}")
    names = _top_level_names(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    # only OPS: a hook defined after a failing import line is the worker's import error to report
    if names is not None and "OPS" not in names and "__getattr__" not in names and "*" not in names:
        raise missing_hook(module, "OPS", names)


def _top_level_names(path: str) -> set[str] | None:
    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None  # the worker's import reports it
    names: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for t in targets:
            names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def unchecked(runs: dict[str, BackendRun], rows: Sequence[ResultRow], explicit: Iterable[str],
              allow_skip: bool = False) -> list[str]:
    """What the user asked for and this run did not check, one line each; empty when every request was met.

    A backend named explicitly (``--backends NAME`` or ``--backend-module``)
    that is unavailable here is such a line unless ``allow_skip``; a broken
    one (import error, ``available()`` raising) and a module without ops
    always are; a named backend whose op table names ops no spec knows, or
    whose every case was skip or unsupported, is too. So is a run that
    executed nothing."""
    from ..core.spec import specs

    explicit = set(explicit)
    known = list(specs())
    out: list[str] = []
    for label, info in runs.items():
        named = label in explicit or info.module is not None
        what = f"backend module {info.module}" if info.module else f"backend {label}"
        if not info.available:
            if info.broken:
                out.append(f"{what} is broken, nothing was checked: {info.reason}")
            elif named and not allow_skip:
                out.append(f"{what} was named explicitly but is unavailable here, nothing was checked: {info.reason} "
                           "(--allow-skip accepts that)")
            continue
        if not info.ops:
            out.append(f"{what} defines no ops (its OPS table is missing or empty), nothing was checked")
            continue
        stray = [o for o in info.ops if o not in known]
        if stray and not named:
            log.warning("%s: OPS names ops no spec knows, never checked: %s", what, stray)
        elif stray:
            hints = [f"{o!r} (did you mean {c[0]!r}?)" if (c := difflib.get_close_matches(o, known, n=1)) else repr(o) for o in stray]
            out.append(f"{what}: OPS names ops no spec knows, never checked: {', '.join(hints)}")
        mine = [r for r in rows if r.backend == label]
        if named and mine and not any(r.verdict in EXECUTED for r in mine):
            why = Counter(f"{r.verdict}: {r.reason}" for r in mine).most_common(1)[0][0]
            out.append(f"{what}: none of its {len(mine)} selected case(s) ran (most common: {why})")
    if rows and not any(r.verdict in EXECUTED for r in rows) and not out:
        why = Counter(f"{r.verdict}: {r.reason}" for r in rows).most_common(1)[0][0]
        if not allow_skip:
            out.append(f"no case was executed on any backend (most common: {why})")
    if not rows and not out:
        out.append("no backend was run")
    return out
