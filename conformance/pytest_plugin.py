"""pytest plugin: run the conformance suite inside any repository.

    pytest --dsport-backend=NAME [--dsport-ops 'moe_*'] [--dsport-set full]
    pytest --dsport-backend-module=my_pkg.my_backend

adds one test per (op, case) of the selected backends, with ids like
``dsport-conformance::act_quant[mybackend-e4m3fn-ue8m0]``. ``fail`` becomes a
test failure whose message names the metric and the bound, ``skip`` and
``unsupported`` become skips with their reason, ``crash`` (an exception) an
error. Cases run in the pytest process (use ``dsport conformance`` for the
subprocess-isolated run that survives segfaults and hangs). The fixture
``dsport_backend`` gives a test the selected backend module.

Without ``--dsport-backend``/``--dsport-backend-module`` the plugin adds
nothing and imports nothing beyond pytest.

As ``dsport conformance`` does, the plugin never reports a green run that
checked nothing: a backend module that cannot be found or imported, one with
no ``OPS`` table, an ``available()`` that raises, a ``--dsport-cases``
pattern matching no case, a named backend that is unavailable here, and a
session whose every conformance case was skipped or unsupported (the last
two unless ``--dsport-allow-skip``) end the session with a usage error
(pytest exit status 4) that says what was not checked and why.
"""
from __future__ import annotations

import os
from typing import Any

import pytest

SUITE = "dsport-conformance"


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("dsport", "dsport conformance")
    g.addoption("--dsport-backend", action="append", default=[], metavar="NAME",
                help="run the dsport conformance suite against this registered backend (repeatable)")
    g.addoption("--dsport-backend-module", action="append", default=[], metavar="DOTTED.PATH",
                help="run the suite against the backend defined by this module (repeatable)")
    g.addoption("--dsport-ops", default=None, metavar="OPS", help="comma-separated ops or globs (default: all)")
    g.addoption("--dsport-cases", default=None, metavar="IDS", help="comma-separated case ids or op/id globs")
    g.addoption("--dsport-set", default="quick", choices=("quick", "full"), help="case set (default quick)")
    g.addoption("--dsport-allow-skip", action="store_true", default=False,
                help="a named backend that is unavailable here becomes skipped tests instead of a usage error")


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("--dsport-backend", None) or config.getoption("--dsport-backend-module", None))


def _load(name: str | None, module: str | None) -> Any:
    import traceback

    from ..core.errors import DsportError

    try:
        from .worker import load

        if module:
            from .runner import check_module

            check_module(module)
        mod = load({"backend": name, "backend_module": module})
    except DsportError as e:
        raise pytest.UsageError(f"dsport: nothing checked: {e}") from None
    except Exception as e:  # noqa: BLE001 - any import failure: what and where, not a traceback through pytest
        frames = traceback.extract_tb(e.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise pytest.UsageError(f"dsport: nothing checked: backend module {module or name} failed to import: "
                                f"{traceback.format_exception_only(e)[-1].strip()}{where}") from None
    if not mod.ops and mod.contract_ops is None:
        raise pytest.UsageError(f"dsport: nothing checked: backend {module or name} defines no OPS table (or an empty one)")
    missing = {k: v for k, v in mod.env.items() if os.environ.get(k) != v}
    if missing:
        env = " ".join(f"{k}={v}" for k, v in missing.items())
        raise pytest.UsageError(f"backend {mod.name} must be imported with {env} set; run: {env} pytest ...")
    return mod


class ConformanceSuite(pytest.Collector):
    def collect(self) -> list[pytest.Item]:  # items are added in pytest_collection_modifyitems
        return []


class ConformanceItem(pytest.Item):
    def __init__(self, *, backend: Any, op: str, case: str, **kw: Any):
        super().__init__(**kw)
        self.backend, self.op, self.case = backend, op, case

    def runtest(self) -> None:
        from ..backends import reference
        from .row import reproduce_command
        from .worker import run_case

        ok, reason = self.backend.available()
        contract = not ok and self.backend.contract_ops is not None  # adapters against their contract models
        if not ok and not contract:
            pytest.skip(f"backend unavailable: {reason}")
        name = self.backend.name
        row = run_case(self.backend, dict(reference.OPS), self.op, self.case, is_reference=name == "reference",
                       contract=contract)
        v = row.verdict
        if v in ("skip", "unsupported"):
            pytest.skip(f"{v}: {row.reason}")
        if v == "crash":
            raise RuntimeError(f"{self.op}/{self.case}: {row.reason}\n{row.metrics.get('traceback', '')}")
        if v not in ("pass", "contract"):
            repro = reproduce_command(name, self.op, self.case, self.backend.module.__name__
                                      if name not in _registered() else None)
            pytest.fail(f"{self.op}/{self.case} on {name}: {row.reason}\nmetrics: {row.metrics}\n"
                        f"tolerance: {row.tolerance}\nseed: {row.seed}\nreproduce: {repro}", pytrace=False)

    def reportinfo(self) -> tuple[str, int, str]:
        return SUITE, 0, f"{self.op}[{self.name}]"


def _registered() -> list[str]:
    from ..core.registry import BUILTIN_BACKENDS

    return list(BUILTIN_BACKENDS)


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so those filter these items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _active(config):
        return
    _TALLY.update(ran=0, skipped=0)  # one session per process, or per in-process pytester run
    from .runner import ConformancePlan, select_items

    split = lambda s: [x for x in s.split(",") if x] if s else None  # noqa: E731
    plan = ConformancePlan(ops=split(config.getoption("--dsport-ops")), case_set=config.getoption("--dsport-set"),
                cases=split(config.getoption("--dsport-cases")))
    from ..core.errors import DsportError

    try:
        pairs = select_items(plan)
    except DsportError as e:
        raise pytest.UsageError(f"dsport: nothing checked: {e}") from None
    suite = ConformanceSuite.from_parent(session, name=SUITE, nodeid=SUITE)
    targets = [(n, None) for n in config.getoption("--dsport-backend")] + [(None, m) for m in config.getoption("--dsport-backend-module")]
    for name, module in targets:
        mod = _load(name, module)
        label = mod.name
        ok, reason, broken = mod.availability()
        if broken:
            raise pytest.UsageError(f"dsport: nothing checked: backend {label}: {reason}")
        if not ok and mod.contract_ops is None and not config.getoption("--dsport-allow-skip"):
            raise pytest.UsageError(f"dsport: nothing checked: backend {label} was named but is unavailable here: {reason} "
                                    "(--dsport-allow-skip turns its cases into skips)")
        for op, case, _ in pairs:
            items.append(ConformanceItem.from_parent(suite, name=f"{op}[{label}-{case}]", backend=mod, op=op, case=case))


@pytest.fixture(scope="session")
def dsport_backend(request: pytest.FixtureRequest) -> Any:
    """The backend module selected with --dsport-backend / --dsport-backend-module (the first one)."""
    cfg = request.config
    names, modules = cfg.getoption("--dsport-backend"), cfg.getoption("--dsport-backend-module")
    if not names and not modules:
        pytest.skip("no --dsport-backend given")
    return _load(names[0] if names else None, None if names else modules[0])


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Count the conformance cases that ran (passed or failed) and those skipped."""
    if not report.nodeid.startswith(SUITE) or report.when not in ("setup", "call"):
        return
    tally = _TALLY
    if report.skipped:
        tally["skipped"] += 1
    elif report.when == "call":
        tally["ran"] += 1


_TALLY = {"ran": 0, "skipped": 0}


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A session whose every conformance case was skipped or unsupported checked nothing: not green."""
    config = session.config
    if not _active(config) or config.getoption("--dsport-allow-skip") or exitstatus != pytest.ExitCode.OK:
        return
    if _TALLY["skipped"] and not _TALLY["ran"]:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"dsport: nothing checked: all {_TALLY['skipped']} conformance case(s) were skipped or "
                                "unsupported (--dsport-allow-skip accepts that)", red=True)
        session.exitstatus = pytest.ExitCode.USAGE_ERROR
