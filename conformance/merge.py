"""Merge conformance reports from different machines (an H200 box, an MI350
box, an Ascend box) into one document, hence one matrix.

Rows keep the machine they ran on; the matrix then shows one column per
backend@machine. A (machine, backend, op, case) present in two inputs is kept
from the later input: re-running a case on the same machine supersedes it.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Sequence
from typing import Any

from dsport.conformance.report import SCHEMA_NAME, SCHEMA_VERSION, summary
from dsport.conformance.schema import validate

log = logging.getLogger(__name__)


def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        doc = json.load(f)
    validate(doc)
    return doc


def merge(docs: Sequence[dict[str, Any]], names: Sequence[str] = ()) -> dict[str, Any]:
    envs: dict[str, dict[str, Any]] = {}
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for doc in docs:
        if doc.get("schema") != SCHEMA_NAME or doc.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"cannot merge a report of schema {doc.get('schema')} v{doc.get('schema_version')}")
        for env in doc["environments"]:
            envs[env["machine"]] = env
        for r in doc["results"]:
            key = (r["machine"], r["backend"], r["op"], r["case"])
            if key in rows:
                log.info("%s: superseded by a later report", "/".join(key))
            rows[key] = r
    sets = sorted({d.get("case_set", "?") for d in docs})
    out = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "command": "dsport conformance merge " + " ".join(names), "case_set": "+".join(sets),
           "merged_from": list(names), "environments": list(envs.values()), "results": list(rows.values())}
    out["summary"] = summary(out["results"])
    validate(out)
    return out
