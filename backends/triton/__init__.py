"""The Triton backend: one kernel source per op for NVIDIA (sm_90a) and AMD
(gfx950, gfx942).

Where it runs: on a GPU through Triton's JIT, or on CPU through Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before triton is imported
(``ENV`` says so to any harness). Where it builds: ``build(target, out_dir)``
compiles every kernel ahead of time at DeepSeek-V3.2 shapes for ``TARGETS``
with no GPU present; those results are ``built``, never ``pass``.

Ops without a Triton kernel are listed in ``NOT_SERVED`` with the reason; a
resolver must fall back for them explicitly (policy ``fallback``) or fail
(``strict``). Nothing falls back silently inside this module.
"""
from __future__ import annotations

import os
from pathlib import Path

from .aot import TARGETS
from ...core.build import KernelBuild
from ...core.fp8 import format_for_arch

NAME = "triton"
DESCRIPTION = "Triton kernels: one source for NVIDIA sm_90a and AMD gfx950/gfx942; CPU via the Triton interpreter"
PRECISION = ("fp32 accumulation and softmax; bf16/fp16/fp32 float inputs; FP8 (e4m3fn or e4m3fnuz) with fp32 or "
             "ue8m0 scales; outputs rounded to nearest-even in the spec's dtype")
ENV: dict[str, str] = {"TRITON_INTERPRET": "1"}

try:
    import triton as _triton

    from . import ops as _ops
    from .numerics import INTERPRETED as _INTERPRETED
    _IMPORT_ERROR: str | None = None
except ImportError as e:  # reported by available(), never raised at import
    _triton = None
    _ops = None
    _INTERPRETED = False
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"

FP8_FORMAT_BY_TARGET: dict[str, str] = {t: format_for_arch(t).name for t in TARGETS}
OPS = dict(_ops.OPS) if _ops is not None else {}
CAPABILITIES = _ops.capabilities(interpreted=_INTERPRETED) if _ops is not None else {}
NOT_SERVED: dict[str, str] = _ops.not_served() if _ops is not None else {}


def available() -> tuple[bool, str]:
    if _IMPORT_ERROR is not None:
        return False, f"triton is not importable: {_IMPORT_ERROR}"
    if _INTERPRETED:
        return True, f"triton {_triton.__version__} through its CPU interpreter (TRITON_INTERPRET=1)"
    import torch

    if torch.cuda.is_available():
        return True, f"triton {_triton.__version__} on GPU {torch.cuda.get_device_name()}"
    hint = ("TRITON_INTERPRET=1 is set but triton was imported before it, so kernels are not interpreted"
            if os.environ.get("TRITON_INTERPRET") == "1" else "set TRITON_INTERPRET=1 before importing triton to run on CPU")
    return False, f"triton {_triton.__version__} is importable but there is no GPU here; {hint}"


def build(target: str, out_dir: str | os.PathLike) -> list[KernelBuild]:
    """Compile every kernel for ``target`` at DeepSeek shapes; artifacts under ``out_dir/target``."""
    if _IMPORT_ERROR is not None:
        from ...core.errors import BackendUnavailable

        raise BackendUnavailable(f"backend 'triton' cannot build: triton is not importable: {_IMPORT_ERROR}")
    from .aot import build as _build

    return _build(target, Path(out_dir))
