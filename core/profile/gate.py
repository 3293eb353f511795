"""The accuracy gate: one place that asks the conformance harness whether a
backend's output agrees with the float64 reference. The metric families and
the tolerance table are conformance's (dsport.conformance.metrics.judge);
nothing here states a tolerance."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...conformance.metrics import judge
from ..spec import OpSpec

SOURCE = "dsport.conformance.metrics.judge (conformance metric families + tolerance table)"


def as_tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def check(spec: OpSpec, args: Mapping[str, Any], impl: Callable[..., Any], refs: Sequence[Any],
          is_reference: bool = False) -> tuple[bool, str, dict[str, Any]]:
    """(ok, reason, metrics) of ``impl(**args)`` against the reference outputs ``refs``."""
    bound = spec.bind(**args)
    dims = spec.validate(bound)
    outs = as_tuple(impl(**args))
    j = judge(spec, bound, dims, [o.cpu() if hasattr(o, "cpu") else o for o in outs], refs, check_dtypes=not is_reference)
    return j.ok, j.reason, j.metrics
