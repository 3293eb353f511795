"""One conformance result: the typed row every producer builds and every
report row is read back into.

A row is built in one of four ways, each a classmethod: :meth:`ResultRow.for_case`
then :meth:`ResultRow.judged` (a case run and judged in a worker), :meth:`ResultRow.build` (a compiled kernel),
:meth:`ResultRow.lost` (a case that got no judgement: crash, timeout, the backend
unavailable or failing to load) and :meth:`ResultRow.model` (a model-conformance
scenario). :meth:`ResultRow.placed` then names the backend and the command that
reproduces the row. :meth:`to_json` writes the ``results[]`` item of the report
(``SCHEMA.md``, ``schema.json``); :meth:`from_json` reads one back, from this
dsport or an older one (keys added later are optional).
"""
from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: keys written only when they hold something (the schema does not require them)
OPTIONAL = ("machine", "ops", "source", "run_device")


class Item(NamedTuple):
    """One (op, case) of a job, with what a row of it needs even when the case never ran."""

    op: str
    case: str
    seed: int | None = None


@dataclass(frozen=True)
class ResultRow:
    """One (backend, op, case) verdict, or one built kernel. Field names are the report's keys."""

    op: str
    case: str
    verdict: str
    backend: str = ""
    machine: str | None = None            # set when a report is written (the environment's machine id)
    ops: list[str] | None = None          # only for built kernels: every op the kernel serves
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    metric: str | None = None
    shapes: dict[str, list[int]] = field(default_factory=dict)
    dtypes: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    dtype: str | None = None
    fp8_format: str | None = None
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    tolerance: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None
    reproduce: str = ""
    source: str | None = None             # only for rows read from a build report: that file
    run_device: dict[str, str] | None = None  # only with --device: {"torch", "name"[, "layout"]} the call ran on

    # -- the four ways a row comes about -------------------------------------------------
    @classmethod
    def for_case(cls, op: str, case: Any, metric: str, described: tuple[dict, dict, dict], query: Mapping[str, Any]) -> ResultRow:
        """The facts of a case before it runs (verdict ``pending``); :meth:`judged` completes it."""
        shapes, dtypes, params = described
        return cls(op=op, case=case.id, verdict="pending", tags=sorted(case.tags), seed=case.seed, metric=metric,
                   shapes=shapes, dtypes=dtypes, params=params,
                   dtype=str(query.get("dtype", "")).removeprefix("torch.") or None, fp8_format=query.get("fp8_format"))

    def judged(self, verdict: str, reason: str = "", metrics: dict[str, Any] | None = None,
                   tolerance: dict[str, Any] | None = None, seconds: float | None = None) -> ResultRow:
        """This case's row with its verdict."""
        return dataclasses.replace(self, verdict=verdict, reason=reason, metrics=metrics or {}, tolerance=tolerance or {},
                                   seconds=seconds)

    @classmethod
    def build(cls, kb: Mapping[str, Any], seconds: float | None = None) -> ResultRow:
        """A KernelBuild record (``KernelBuild.to_json()``) as a row: built, never pass (it did not run)."""
        status, findings = kb.get("status"), kb.get("findings") or []
        if status == "built":
            verdict = "built"
            reason = "compiled, not executed (no such device here)" + (f"; findings: {', '.join(findings)}" if findings else "")
        elif status == "source":  # lowered, but no toolchain here to compile it: unknown, not failed
            verdict, reason = "skip", f"device source emitted, not compiled here: {kb.get('detail', '')}"
        else:
            verdict, reason = "fail", f"build failed: {kb.get('detail', '')}"
        ops = list(kb.get("ops") or ["(build)"])
        keys = ("artifact", "registers", "spills", "shared_bytes", "matrix_instr", "matrix_found", "hot")
        return cls(op=ops[0], ops=ops, case=f"{kb['target']}:{kb['kernel']}", tags=["build"], metric="build",
                   params={"target": kb["target"]}, verdict=verdict, reason=reason, metrics={k: kb.get(k) for k in keys},
                   seconds=seconds, backend=kb.get("backend") or "")

    @classmethod
    def lost(cls, item: Item, verdict: str, reason: str, seconds: float | None = None,
             metrics: dict[str, Any] | None = None) -> ResultRow:
        """A case that got no judgement (crash, timeout, skip, harness error): what the job knew of it."""
        return cls(op=item.op, case=item.case, seed=item.seed, verdict=verdict, reason=reason, seconds=seconds,
                   metrics=metrics or {})

    @classmethod
    def model(cls, backend: str, case: str, verdict: str, reason: str, metrics: dict[str, Any], seconds: float | None,
              reproduce: list[str]) -> ResultRow:
        """One model-conformance scenario on one backend."""
        return cls(backend=backend, op="(model)", case=case, tags=["model"], metric="model", dtype=metrics.get("precision"),
                   verdict=verdict, reason=reason, metrics=metrics, seconds=seconds, reproduce=shlex.join(reproduce))

    @property
    def is_build(self) -> bool:
        return self.op == "(build)" or self.metric == "build"

    def placed(self, backend: str, module: str | None = None) -> ResultRow:
        """This row as run by ``backend`` (``module``: its dotted path, for --backend-module backends), with the
        command that reproduces it. A built kernel keeps the backend its build record names."""
        if self.is_build:
            target = self.params.get("target", self.case)
            return dataclasses.replace(self, backend=self.backend or backend, reproduce=shlex.join(
                ["dsport", "conformance", "--backends", backend, "--build", "--targets", target]))
        return dataclasses.replace(self, backend=backend, reproduce=reproduce_command(backend, self.op, self.case, module))

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """The report's ``results[]`` item (optional keys only when set)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in OPTIONAL:
            if out[k] is None:
                del out[k]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResultRow:
        """A row from a report's ``results[]`` item; keys added after a report was written take their defaults."""
        unknown = set(data) - FIELDS
        if unknown:
            from ..core.errors import ConfigError

            raise ConfigError(f"conformance result row: unknown key(s) {sorted(unknown)}; known: {sorted(FIELDS)}")
        return cls(**data)

    def __getitem__(self, key: str) -> Any:
        """A field by its report key: rows and report documents are read with one spelling."""
        if key not in FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        value = getattr(self, key, None) if key in FIELDS else None
        return default if value is None else value


FIELDS = frozenset(f.name for f in dataclasses.fields(ResultRow))


def reproduce_command(backend: str, op: str, case: str, module: str | None = None) -> str:
    """The shell command that re-runs one case alone."""
    parts = ["dsport", "conformance", "--backends", backend, "--ops", op, "--cases", case]
    if module:
        parts[2:4] = ["--backend-module", module]
    return shlex.join(parts)
