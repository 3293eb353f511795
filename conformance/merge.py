"""Merge conformance reports from different machines (an H200 box, an MI350
box, an Ascend box) into one document, hence one matrix.

Rows keep the machine they ran on; the matrix then shows one column per
backend@machine, so two machines that disagree on a case both stay visible
(:func:`conflicts` lists them). A (machine, backend, op, case) present in two
inputs is kept from the report with the newer ``created`` time, whatever the
order of the arguments, and the merged document lists every row it
superseded under ``superseded``.

A report that cannot be read (empty, truncated, binary, not a conformance
report) is a :class:`ReportError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import SCHEMA_NAME, SCHEMA_VERSION, summary
from .row import ResultRow
from .schema import errors
from ..core.errors import ConfigError
from ..core.files import read_text

log = logging.getLogger(__name__)


class ReportError(ConfigError):
    """A conformance report that cannot be merged; the message names the file."""


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate one report; every way it can be unreadable is a ReportError naming ``path``."""
    p = Path(path)
    text = read_text(p, "a JSON conformance report", error=ReportError)
    if not text.strip():
        raise ReportError(f"{p}: empty file, not a conformance report")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        cut = " (the file ends early: truncated?)" if e.pos >= len(text.rstrip()) else ""
        raise ReportError(f"{p}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}{cut}") from None
    if not isinstance(doc, dict):
        raise ReportError(f"{p}: expected a JSON object (a conformance report), got {type(doc).__name__}")
    if doc.get("schema") != SCHEMA_NAME:
        raise ReportError(f"{p}: not a dsport conformance report (schema {doc.get('schema')!r}, expected {SCHEMA_NAME!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"{p}: report schema version {doc.get('schema_version')!r}; this dsport merges version {SCHEMA_VERSION}")
    errs = errors(doc)
    if errs:
        more = f" (and {len(errs) - 5} more)" if len(errs) > 5 else ""
        raise ReportError(f"{p}: does not match the report schema: " + "; ".join(errs[:5]) + more)
    if _created(doc) is None:
        raise ReportError(f"{p}: 'created' is not an ISO 8601 time: {doc['created']!r}")
    return doc


def _created(doc: Mapping[str, Any]) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(str(doc["created"]))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def merge(docs: Sequence[dict[str, Any]], names: Sequence[str] = ()) -> dict[str, Any]:
    """One document from several; a duplicate (machine, backend, op, case) keeps the newer report's row."""
    names = list(names) or [f"report {i + 1}" for i in range(len(docs))]
    envs: dict[str, tuple[_dt.datetime, dict[str, Any]]] = {}
    rows: dict[tuple[str, str, str, str], tuple[_dt.datetime, str, ResultRow]] = {}
    superseded: list[str] = []
    for doc, name in zip(docs, names):
        if doc.get("schema") != SCHEMA_NAME or doc.get("schema_version") != SCHEMA_VERSION:
            raise ReportError(f"{name}: cannot merge a report of schema {doc.get('schema')} v{doc.get('schema_version')}")
        created = _created(doc)
        if created is None:
            raise ReportError(f"{name}: 'created' is not an ISO 8601 time: {doc.get('created')!r}")
        for env in doc["environments"]:
            if env["machine"] not in envs or envs[env["machine"]][0] <= created:
                envs[env["machine"]] = (created, env)
        for r in map(ResultRow.from_json, doc["results"]):
            key = (r.machine or "", r.backend, r.op, r.case)
            if key in rows:
                old_t, old_name, old = rows[key]
                keep_new = created >= old_t  # equal times: the later argument, as before
                (kt, kn, k), (lt, ln, lost) = ((created, name, r), (old_t, old_name, old)) if keep_new else ((old_t, old_name, old), (created, name, r))
                superseded.append(f"{'/'.join(key)}: kept {k.verdict} from {kn} (created {kt.isoformat()}), "
                                  f"superseded {lost.verdict} from {ln} (created {lt.isoformat()})")
                if not keep_new:
                    continue
            rows[key] = (created, name, r)
    sets = sorted({d.get("case_set", "?") for d in docs})
    out: dict[str, Any] = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
                           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           "command": "dsport conformance merge " + " ".join(names), "case_set": "+".join(sets),
                           "merged_from": list(names), "environments": [e for _, e in envs.values()],
                           "results": [r.to_json() for _, _, r in rows.values()]}
    if superseded:
        out["superseded"] = superseded
        for line in superseded:
            log.info("merge: %s", line)
    out["summary"] = summary(out["results"])
    errs = errors(out)
    if errs:
        raise ReportError("merged report does not match the schema: " + "; ".join(errs[:5]))
    return out


def conflicts(doc: Mapping[str, Any]) -> list[str]:
    """(backend, op, case) whose verdict differs between machines; each row stays in the
    document, labelled by its machine; this only names them."""
    by: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for r in doc["results"]:
        by[(r["backend"], r["op"], r["case"])][r["machine"]] = r["verdict"]
    return [f"{'/'.join(k)}: " + ", ".join(f"{v} on {m}" for m, v in sorted(per.items()))
            for k, per in by.items() if len(set(per.values())) > 1]
