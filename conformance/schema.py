"""Validation of conformance reports against schema.json.

The schema uses a small subset of JSON Schema (type, const, enum, required,
properties, additionalProperties, items, minimum), checked here so a report
can be validated without extra dependencies; a full JSON Schema validator
accepts the same file."""
from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("schema.json")

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def errors(doc: Any, node: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Every place where ``doc`` breaks the schema, as 'path: problem'."""
    node = schema() if node is None else node
    out: list[str] = []
    if "const" in node and doc != node["const"]:
        return [f"{path}: expected {node['const']!r}, got {doc!r}"]
    if "enum" in node and doc not in node["enum"]:
        return [f"{path}: expected one of {node['enum']}, got {doc!r}"]
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_TYPES[t](doc) for t in types):
            return [f"{path}: expected {'/'.join(types)}, got {type(doc).__name__} {doc!r:.60}"]
    if "minimum" in node and isinstance(doc, (int, float)) and not isinstance(doc, bool) and doc < node["minimum"]:
        out.append(f"{path}: {doc} < minimum {node['minimum']}")
    if isinstance(doc, dict):
        for k in node.get("required", []):
            if k not in doc:
                out.append(f"{path}: missing required '{k}'")
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for k, v in doc.items():
            if k in props:
                out += errors(v, props[k], f"{path}.{k}")
            elif extra is False:
                out.append(f"{path}: unexpected key '{k}'")
            elif isinstance(extra, dict):
                out += errors(v, extra, f"{path}.{k}")
    if isinstance(doc, list) and "items" in node:
        for i, v in enumerate(doc):
            out += errors(v, node["items"], f"{path}[{i}]")
    return out


def validate(doc: Any) -> None:
    """Raise ConfigError listing the first problems when ``doc`` is not a valid report."""
    from ..core.errors import ConfigError

    errs = errors(doc)
    if errs:
        more = f" (and {len(errs) - 10} more)" if len(errs) > 10 else ""
        raise ConfigError("conformance report does not match schema version 1: " + "; ".join(errs[:10]) + more)
