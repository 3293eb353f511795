"""Run backends x ops x cases, each backend in its own subprocess.

A worker (:mod:`dsport.conformance.worker`) announces every case before it
runs it. When the worker dies, the announced case is recorded as ``crash``
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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

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


def select_items(plan: ConformancePlan) -> list[tuple[str, str]]:
    """(op, case id) pairs in spec order, filtered by op, set and id patterns."""
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
                    items.append((name, c.id))
            elif plan.case_set in c.tags:
                items.append((name, c.id))
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


def _seed(op: str, case: str) -> int | None:
    from ..core.spec import specs

    spec = specs().get(op)
    return next((c.seed for c in spec.cases() if c.id == case), None) if spec else None


def reproduce_command(backend: str, op: str, case: str, module: str | None = None) -> str:
    parts = ["dsport", "conformance", "--backends", backend, "--ops", op, "--cases", case]
    if module:
        parts[2:4] = ["--backend-module", module]
    return shlex.join(parts)


def _worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    # the worker must import what this process imports (dsport itself, test backends)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}
    return {**env, **(extra or {})}


class _Worker:
    def __init__(self, job: dict[str, Any]):
        self.jobfile = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(job, self.jobfile)
        self.jobfile.close()
        self.errfile = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "dsport.conformance.worker", self.jobfile.name],
                                     stdout=subprocess.PIPE, stderr=self.errfile, text=True, env=_worker_env(),
                                     start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None at end of stream; raises queue.Empty on timeout."""
        while True:
            line = self.lines.get(timeout=timeout)
            if line is None:
                return None
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                log.warning("worker wrote a non-protocol line: %r", line[:200])

    def died(self) -> str:
        rc = self.proc.wait(timeout=10)
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        return f"worker {how}" + (f"; stderr: {self.stderr_tail()}" if self.stderr_tail() else "")

    def stderr_tail(self, n: int = 600) -> str:
        self.errfile.seek(0)
        return " ".join(self.errfile.read()[-n:].split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self.errfile.close()
        os.unlink(self.jobfile.name)


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


def run_backend(label: str, module: str | None, items: Sequence[tuple[str, str]], plan: ConformancePlan,
                on_row: Callable[[dict[str, Any]], None] = lambda r: None,
                build_targets: Sequence[str] | None = None) -> tuple[BackendRun, list[dict[str, Any]]]:
    """All cases of one backend; restarts the worker after a crash or hang."""
    info = BackendRun(label, module=module)
    rows: list[dict[str, Any]] = []
    remaining = list(items) if not build_targets else [("(build)", t) for t in build_targets]

    def add(row: dict[str, Any]) -> None:
        row.setdefault("backend", info.label)
        row["backend"] = info.label if row.get("metric") != "build" or not row.get("backend") else row["backend"]
        if "seed" not in row and row["op"] != "(build)":
            row["seed"] = _seed(row["op"], row["case"])
        for k, v in (("tags", []), ("seed", None), ("metric", None), ("shapes", {}), ("dtypes", {}), ("params", {}), ("dtype", None),
                     ("fp8_format", None), ("reason", ""), ("metrics", {}), ("tolerance", {}), ("seconds", None)):
            row.setdefault(k, v)
        if row["op"] == "(build)" or row.get("metric") == "build":
            row["reproduce"] = shlex.join(["dsport", "conformance", "--backends", info.label, "--build", "--targets",
                                           row["params"].get("target", row["case"])])
        else:
            row["reproduce"] = reproduce_command(info.label, row["op"], row["case"], module)
        rows.append(row)
        on_row(row)

    while remaining:
        job = {"backend": label, "backend_module": module, "items": remaining, "ref_cache": plan.ref_cache,
               "case_set": None if plan.cases else plan.case_set}
        if build_targets:
            job = {**job, "items": [], "build": {"targets": [c for _, c in remaining], "out_dir": plan.build_dir or tempfile.mkdtemp(prefix="dsport-build-")}}
        w = _Worker(job)
        in_flight: tuple[str, str] | None = None
        started = time.monotonic()
        try:
            ready = w.next(plan.load_timeout)
        except queue.Empty:
            ready = {"event": "ready", "available": False, "verdict": "timeout",
                     "reason": f"backend import did not finish within {plan.load_timeout:.0f} s"}
        if ready is None:
            ready = {"event": "ready", "available": False, "verdict": "crash", "reason": f"backend worker died while loading: {w.died()}"}
        info.available, info.reason = bool(ready.get("available")), ready.get("reason", "")
        info.ops, info.targets, info.env = ready.get("ops", []), ready.get("targets", []), ready.get("env", {})
        # a module that imports but cannot import a name it needs is broken; a missing package is a missing dependency
        half_imported = module is not None and str(ready.get("reason", "")).startswith("import failed: ImportError")
        info.broken = bool(ready.get("broken")) or half_imported or ready.get("verdict") in ("crash", "timeout")
        if module and ready.get("name"):
            info.label = ready["name"]
        if not info.available:
            # unavailable here (a missing dependency, no device) is a skip; a backend that cannot even load is not
            verdict = ready.get("verdict") or ("crash" if info.broken else "skip")
            for op, case in remaining:
                add({"op": op, "case": case, "verdict": verdict,
                     "reason": f"backend unavailable: {info.reason}" if verdict == "skip" else f"backend failed to load: {info.reason}"})
            w.close()
            break
        case_timeout = plan.build_timeout if build_targets else plan.timeout
        try:
            while True:
                try:
                    ev = w.next(case_timeout if in_flight else plan.load_timeout)
                except queue.Empty:
                    if in_flight is None:
                        raise
                    add({"op": in_flight[0], "case": in_flight[1], "verdict": "timeout",
                         "reason": f"no result within {case_timeout:g} s; worker killed", "seconds": time.monotonic() - started})
                    remaining = remaining[remaining.index(in_flight) + 1:]
                    break
                if ev is None:
                    if in_flight is not None:
                        add({"op": in_flight[0], "case": in_flight[1], "verdict": "crash", "reason": w.died(),
                             "seconds": time.monotonic() - started})
                        remaining = remaining[remaining.index(in_flight) + 1:]
                    else:
                        for op, case in remaining:
                            add({"op": op, "case": case, "verdict": "crash", "reason": f"worker ended before this case: {w.died()}"})
                        remaining = []
                    break
                if ev.get("event") == "start":
                    in_flight, started = (ev["op"], ev["case"]), time.monotonic()
                elif ev.get("event") == "result":
                    for row in ev["rows"]:
                        add(row)
                    if in_flight in remaining:
                        remaining = remaining[remaining.index(in_flight) + 1:]
                    in_flight = None
                elif ev.get("event") == "done":
                    remaining = []
                    break
        finally:
            w.close()
    return info, rows


def run(plan: ConformancePlan, on_row: Callable[[dict[str, Any]], None] = lambda r: None,
        on_backend: Callable[[str, int], None] = lambda name, n: None) -> tuple[dict[str, BackendRun], list[dict[str, Any]]]:
    """Every selected backend over the selected cases; returns availability and result rows."""
    items = select_items(plan)
    targets: list[tuple[str, str | None]] = [(b, None) for b in plan.backends] + [(m.rsplit(".", 1)[-1], m) for m in plan.backend_modules]
    with tempfile.TemporaryDirectory(prefix="dsport-ref-") as tmp:
        plan = dataclasses.replace(plan, ref_cache=plan.ref_cache or tmp)
        lock = threading.Lock()

        def locked(row: dict[str, Any]) -> None:
            with lock:
                on_row(row)

        with ThreadPoolExecutor(max_workers=max(1, plan.jobs)) as pool:
            done = list(pool.map(lambda t: _one_backend(t[0], t[1], items, plan, locked, on_backend), targets))
    runs: dict[str, BackendRun] = {}
    rows: list[dict[str, Any]] = []
    for info, got in done:  # in the order asked for, whatever order they finished in
        runs[info.label] = info
        rows += got
    return runs, rows


def _one_backend(label: str, module: str | None, items: list[tuple[str, str]], plan: ConformancePlan,
                 on_row: Callable[[dict[str, Any]], None], on_backend: Callable[[str, int], None]) -> tuple[BackendRun, list[dict[str, Any]]]:
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
            got += [r for r in built if not plan.ops or any(fnmatch.fnmatchcase(o, p) for o in r.get("ops") or [r["op"]] for p in plan.ops)]
    return info, got


def load_build_reports(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Rows from build reports written earlier (``dsport build --json F``: a list of KernelBuild.to_json())."""
    from .worker import build_row

    rows = []
    for p in paths:
        with open(p) as f:
            data = json.load(f)
        for kb in data if isinstance(data, list) else data.get("builds", []):
            row = build_row(kb)
            row["backend"] = kb.get("backend") or "?"
            row["reproduce"] = shlex.join(["dsport", "build", "--backend", row["backend"], "--target", kb["target"]])
            row["source"] = os.path.abspath(p)
            rows.append(row)
    return rows


def check_module(module: str) -> None:
    """Fail fast, before any worker starts, on a ``--backend-module`` that
    cannot be found (a typo) or whose source has no ``OPS`` table. Reads the
    source without executing it; import errors inside the module are the
    worker's to report, with their traceback's last line."""
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
    if names is not None and "OPS" not in names and "__getattr__" not in names and not any(n == "*" for n in names):
        close = difflib.get_close_matches("OPS", sorted(names), n=1, cutoff=0.5) or [n for n in sorted(names) if n.upper() == "OPS"]
        hint = f"; it defines '{close[0]}' (did you mean 'OPS'?)" if close else ""
        raise ConfigError(f"--backend-module {module}: defines no OPS table (a dict op name -> callable), so nothing can be "
                          f"checked{hint}")


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


def unchecked(runs: dict[str, BackendRun], rows: Sequence[dict[str, Any]], explicit: Iterable[str],
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
        mine = [r for r in rows if r.get("backend") == label]
        if named and mine and not any(r["verdict"] in EXECUTED for r in mine):
            why = Counter(f"{r['verdict']}: {r.get('reason', '')}" for r in mine).most_common(1)[0][0]
            out.append(f"{what}: none of its {len(mine)} selected case(s) ran (most common: {why})")
    if rows and not any(r["verdict"] in EXECUTED for r in rows) and not out:
        why = Counter(f"{r['verdict']}: {r.get('reason', '')}" for r in rows).most_common(1)[0][0]
        if not allow_skip:
            out.append(f"no case was executed on any backend (most common: {why})")
    if not rows and not out:
        out.append("no backend was run")
    return out
