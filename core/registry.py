"""Backends and the resolved OpTable.

A backend is a module with ``NAME``, ``OPS`` (op name -> callable),
``available() -> (ok, reason)`` and optionally ``CAPABILITIES``,
``DESCRIPTION`` and ``PRECISION``. Resolution happens once, when the OpTable
is built: afterwards an op is a plain attribute holding the bound function.
"""
from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from dsport.core.errors import BackendUnavailable, ConfigError
from dsport.core.spec import specs

log = logging.getLogger(__name__)

BUILTIN_BACKENDS: dict[str, str] = {
    "reference": "dsport.backends.reference",
    "torch": "dsport.backends.torch",
    "triton": "dsport.backends.triton",
    "tilelang": "dsport.backends.tilelang",
}


def load_backend(name: str) -> ModuleType:
    if name not in BUILTIN_BACKENDS:
        import difflib

        close = difflib.get_close_matches(name, BUILTIN_BACKENDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"backend: unknown backend '{name}'{hint}; valid: {sorted(BUILTIN_BACKENDS)}")
    return importlib.import_module(BUILTIN_BACKENDS[name])


class OpTable:
    """Every op bound once. ``table.act_quant(...)`` calls the bound function
    directly: there is no lookup or dispatch per call."""

    def __init__(self, bound: dict[str, Callable[..., Any]], served_by: dict[str, str], trace: list[str]):
        self.__dict__.update(bound)
        self.ops = dict(bound)
        self.served_by = served_by
        self.trace = trace

    def __repr__(self) -> str:
        return f"OpTable({', '.join(f'{op}={b}' for op, b in self.served_by.items())})"


def resolve(backend: str = "reference", validate: bool = True) -> OpTable:
    """Bind every op of ``backend``. With ``validate`` each call checks its
    arguments against the op spec and raises a named ValidationError."""
    mod = load_backend(backend)
    ok, reason = mod.available()
    if not ok:
        raise BackendUnavailable(f"backend '{backend}' is unavailable here: {reason}")
    table = specs()
    served = [op for op in table if op in mod.OPS]
    bound = {op: table[op].checked(mod.OPS[op]) if validate else mod.OPS[op] for op in served}
    return OpTable(bound, {op: backend for op in served}, [])
