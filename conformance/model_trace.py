"""Per-layer, per-op checking of a model run, to name the first op and layer
where a backend leaves the reference.

The model is built on a :class:`CheckedOps` instead of the bare OpTable; a
forward pre-hook on each decoder block tells it which layer is running. Every
call is replayed through the reference op on the very same arguments and
judged with the conformance harness's metric and tolerance table. Judging
each op on its own inputs isolates it: an op that is right stays in
tolerance however far upstream drift has carried its inputs, so the first
failing call names the culprit, not its victims.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..core.registry import OpTable
from ..core.spec import specs


@dataclass
class OpCheck:
    layer: int          # -1 outside the decoder blocks (yarn table, final norm)
    op: str
    index: int          # n-th call of this op within the layer
    ok: bool
    reason: str
    metrics: dict[str, Any]
    phase: str = "prefill"  # or "decode step N"


class CheckedOps:
    """Forwards every op to ``ops`` and judges its outputs against ``reference``."""

    def __init__(self, ops: OpTable, reference: OpTable):
        self._ops, self._ref = ops, reference
        self.checks: list[OpCheck] = []
        self.layer = -1
        self.phase = "prefill"
        self._counts: dict[tuple[str, int, str], int] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self._ops, name)
        spec = specs()[name]
        ref = getattr(self._ref, name)

        def checked(*args: Any, **kwargs: Any) -> Any:
            from .metrics import judge

            out = fn(*args, **kwargs)
            bound = spec.bind(*args, **kwargs)
            dims = spec.validate(bound)
            want = ref(**bound)
            outs = out if isinstance(out, tuple) else (out,)
            refs = want if isinstance(want, tuple) else (want,)
            # dtypes are the op-level harness's business; here only the numbers count
            j = judge(spec, bound, dims, outs, refs, check_dtypes=False)
            key = (self.phase, self.layer, name)
            self._counts[key] = self._counts.get(key, 0) + 1
            self.checks.append(OpCheck(self.layer, name, self._counts[key] - 1, j.ok, j.reason, j.metrics, self.phase))
            return out

        self.__dict__[name] = checked  # built once: later lookups find it without __getattr__
        return checked

    def watch(self, model: torch.nn.Module) -> None:
        """Tag calls with the index of the decoder block they run in."""
        for i, block in enumerate(model.model.layers):
            block.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "layer", i))
        model.model.norm.register_forward_pre_hook(lambda m, a: setattr(self, "layer", -1))

    def first_failure(self) -> OpCheck | None:
        return next((c for c in self.checks if not c.ok), None)
