"""torch_npu's registered op schemas, read from its wheel, and a checker of
calls against them.

torch_npu registers its custom ops from ``torch_npu/csrc/aten/
npu_native_functions_by_codegen.yaml`` (shipped inside the wheel): one
``func:`` line per op in the native-functions schema language, e.g.
``npu_rms_norm(Tensor self, Tensor gamma, float epsilon=1e-06) -> (Tensor, Tensor)``.
The op's docstrings (``torch_npu/_op_plugin_docs.py``) lag behind these
schemas, so the adapters are checked against the schemas, never the docs.

The wheel is read as a zip; torch_npu is never installed (once installed,
``import torch`` itself fails without Ascend's CANN libraries).
"""
from __future__ import annotations

import hashlib
import inspect
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

SCHEMA_PATH = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
#: the wheel the adapters are written against: one fixed file, fetched by
#: ``pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11``
WHEEL = "torch_npu-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"
WHEEL_VERSION = "2.13.0"
WHEEL_SHA256 = "0deb809cf447d3fce636ccfdc9c9f874950f1fe76f18f4aaab31e2d345f7dac0"
WHEEL_MB = 43.6

_REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Arg:
    name: str
    type: str           # as written: Tensor, Tensor?, int, int?, str, float, bool, Tensor[]?, SymInt[]? ...
    default: Any        # the parsed default, or inspect.Parameter.empty
    keyword_only: bool

    @property
    def optional(self) -> bool:
        return self.type.endswith("?")


@dataclass(frozen=True)
class Schema:
    name: str
    args: tuple[Arg, ...]
    returns: str

    def arg(self, name: str) -> Arg | None:
        return next((a for a in self.args if a.name == name), None)


def _split_top(s: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return out + ([cur.strip()] if cur.strip() else [])


def _default(text: str) -> Any:
    if text in ("None",):
        return None
    if text in ("True", "False"):
        return text == "True"
    if text[:1] in "'\"":
        return text[1:-1]
    if text.startswith("["):
        return [_default(x) for x in _split_top(text[1:-1])]
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text  # a symbolic default (at::Reduction::Mean, contiguous_format): kept as written


_FUNC = re.compile(r"^(?P<name>[\w.]+)\((?P<args>.*)\)\s*->\s*(?P<ret>.+)$")


def parse_func(func: str) -> Schema:
    """One native-functions schema line -> :class:`Schema` (the overload name kept after a dot)."""
    m = _FUNC.match(func.strip())
    if m is None:
        raise ValueError(f"not a schema: {func!r}")
    args, kw = [], False
    for part in _split_top(m["args"]):
        if part == "*":
            kw = True
            continue
        decl, _, default = part.partition("=")
        typ, name = decl.rsplit(None, 1)
        typ = re.sub(r"\([a-z]!?\)", "", typ)  # alias annotations: Tensor(a!) -> Tensor
        args.append(Arg(name, typ, _default(default.strip()) if default else _REQUIRED, kw))
    return Schema(m["name"], tuple(args), m["ret"].strip())


def load_schemas(text: str) -> dict[str, Schema]:
    """Every ``func:`` of the yaml, by op name (overloads as ``name.overload``)."""
    data = yaml.safe_load(text)
    found: dict[str, Schema] = {}

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("func"), str) and "(" in node["func"]:  # bare names list aten ops it implements
                s = parse_func(node["func"])
                found[s.name] = s
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    return found


def schemas_from_wheel(wheel: str | Path) -> dict[str, Schema]:
    with zipfile.ZipFile(wheel) as z:
        return load_schemas(z.read(SCHEMA_PATH).decode())


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -- checking ---------------------------------------------------------------------------------------------------
def _kind_ok(typ: str, value: Any) -> bool:
    base, opt = typ.rstrip("?"), typ.endswith("?")
    if value is None:
        return opt
    if base.endswith("[]"):
        inner = base[:-2]
        return isinstance(value, (list, tuple)) and all(_kind_ok(inner, v) for v in value)
    if base == "Tensor":
        return isinstance(value, torch.Tensor)
    if base in ("int", "SymInt"):
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, (float, int)) and not isinstance(value, bool)
    if base == "bool":
        return isinstance(value, bool)
    if base == "str":
        return isinstance(value, str)
    if base == "ScalarType":
        return isinstance(value, torch.dtype)
    return True  # a type the adapters never pass: not judged


def check_call(schema: Schema, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
    """Why the call ``op(*args, **kwargs)`` does not match ``schema``; empty when it does."""
    problems: list[str] = []
    positional = [a for a in schema.args if not a.keyword_only]
    if len(args) > len(positional):
        problems.append(f"{len(args)} positional arguments, the schema has {len(positional)} before '*' "
                        f"({', '.join(a.name for a in positional)})")
    given = {a.name: v for a, v in zip(positional, args)}
    for k, v in kwargs.items():
        if schema.arg(k) is None:
            problems.append(f"unknown argument '{k}'")
        elif k in given:
            problems.append(f"argument '{k}' given twice")
        else:
            given[k] = v
    for a in schema.args:
        if a.default is _REQUIRED and a.name not in given:
            problems.append(f"required argument '{a.name}' ({a.type}) missing")
        elif a.name in given and not _kind_ok(a.type, given[a.name]):
            problems.append(f"argument '{a.name}': schema type {a.type}, got {type(given[a.name]).__name__}")
    return problems


def check_signature(schema: Schema, fn: Any) -> list[str]:
    """Where a Python function's signature (a contract model) departs from the schema:
    names in order, positional vs keyword-only, defaults."""
    params = list(inspect.signature(fn).parameters.values())
    problems: list[str] = []
    names = [p.name for p in params]
    want = [a.name for a in schema.args]
    if names != want:
        problems.append(f"argument names {names}, schema {want}")
        return problems
    for p, a in zip(params, schema.args):
        kw = p.kind is inspect.Parameter.KEYWORD_ONLY
        if kw != a.keyword_only:
            problems.append(f"'{a.name}' is {'keyword-only' if kw else 'positional'}, schema says "
                            f"{'keyword-only' if a.keyword_only else 'positional'}")
        if p.default != a.default and not (p.default is _REQUIRED and a.default is _REQUIRED):
            problems.append(f"'{a.name}' default {p.default!r}, schema {a.default!r}")
    return problems


class Recorder:
    """Stands in for ``torch_npu``: records every call, then runs the contract model of the op."""

    def __init__(self, models: Mapping[str, Any]):
        self.models, self.calls = dict(models), []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("models", "calls"):
            raise AttributeError(name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return self.models[name](*args, **kwargs)
        return call
