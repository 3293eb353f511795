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


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption("--dsport-backend", None) or config.getoption("--dsport-backend-module", None))


def _load(name: str | None, module: str | None) -> Any:
    if module:
        from dsport.core.backend import import_backend

        mod = import_backend(module)
    else:
        from dsport.core.registry import load_backend

        mod = load_backend(name)  # type: ignore[arg-type]
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
        from dsport.backends import reference
        from dsport.conformance.runner import reproduce_command
        from dsport.conformance.worker import run_case

        ok, reason = self.backend.available()
        if not ok:
            pytest.skip(f"backend unavailable: {reason}")
        name = self.backend.name
        row = run_case(self.backend, dict(reference.OPS), self.op, self.case, is_reference=name == "reference")
        v = row["verdict"]
        if v in ("skip", "unsupported"):
            pytest.skip(f"{v}: {row['reason']}")
        if v == "crash":
            raise RuntimeError(f"{self.op}/{self.case}: {row['reason']}\n{row['metrics'].get('traceback', '')}")
        if v != "pass":
            repro = reproduce_command(name, self.op, self.case, self.backend.module.__name__
                                      if name not in _registered() else None)
            pytest.fail(f"{self.op}/{self.case} on {name}: {row['reason']}\nmetrics: {row['metrics']}\n"
                        f"tolerance: {row['tolerance']}\nseed: {row['seed']}\nreproduce: {repro}", pytrace=False)

    def reportinfo(self) -> tuple[str, int, str]:
        return SUITE, 0, f"{self.op}[{self.name}]"


def _registered() -> list[str]:
    from dsport.core.registry import BUILTIN_BACKENDS

    return list(BUILTIN_BACKENDS)


@pytest.hookimpl(tryfirst=True)  # before -k/-m deselection, so those filter these items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if not _active(config):
        return
    from dsport.conformance.runner import Plan, select_items

    split = lambda s: [x for x in s.split(",") if x] if s else None  # noqa: E731
    plan = Plan(ops=split(config.getoption("--dsport-ops")), case_set=config.getoption("--dsport-set"),
                cases=split(config.getoption("--dsport-cases")))
    pairs = select_items(plan)
    suite = ConformanceSuite.from_parent(session, name=SUITE, nodeid=SUITE)
    targets = [(n, None) for n in config.getoption("--dsport-backend")] + [(None, m) for m in config.getoption("--dsport-backend-module")]
    for name, module in targets:
        mod = _load(name, module)
        label = mod.name
        for op, case in pairs:
            items.append(ConformanceItem.from_parent(suite, name=f"{op}[{label}-{case}]", backend=mod, op=op, case=case))


@pytest.fixture(scope="session")
def dsport_backend(request: pytest.FixtureRequest) -> Any:
    """The backend module selected with --dsport-backend / --dsport-backend-module (the first one)."""
    cfg = request.config
    names, modules = cfg.getoption("--dsport-backend"), cfg.getoption("--dsport-backend-module")
    if not names and not modules:
        pytest.skip("no --dsport-backend given")
    return _load(names[0] if names else None, None if names else modules[0])
