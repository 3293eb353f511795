"""dsport: one backend-agnostic graph for DeepSeek-V3.2's operators (DSA, MLA,
MoE), dispatched to per-hardware op tables and checked against a float
reference.

    >>> import dsport
    >>> ops = dsport.resolve("reference")
    >>> y, s = ops.act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0")

Names are imported on first use, so ``import dsport`` (and the pytest plugin
that rides on it) does not pay for importing torch until something needs it.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "resolve": "dsport.core.registry", "OpTable": "dsport.core.registry",
    "specs": "dsport.core.spec", "get_spec": "dsport.core.spec", "OpSpec": "dsport.core.spec",
    "Fp8Format": "dsport.core.fp8", "ScaleFormat": "dsport.core.fp8", "E4M3FN": "dsport.core.fp8",
    "E4M3FNUZ": "dsport.core.fp8", "FP32": "dsport.core.fp8", "UE8M0": "dsport.core.fp8",
    "DsportError": "dsport.core.errors", "ValidationError": "dsport.core.errors", "ConfigError": "dsport.core.errors",
    "BackendUnavailable": "dsport.core.errors", "ResolveError": "dsport.core.errors",
    "Model": "dsport.core.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dsport' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
