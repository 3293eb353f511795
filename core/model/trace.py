"""Per-layer, per-op tracing of a model run, to name the first op and layer
where a backend leaves the reference.

The model is built on a :class:`RecordingOps` instead of the bare OpTable; a
forward pre-hook on each decoder block tells the recorder which layer is
running. Two runs (reference and backend) produce call lists of the same
shape, compared pairwise in call order.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dsport.core.registry import OpTable


@dataclass
class OpCall:
    layer: int          # -1 outside the decoder blocks (yarn table, final norm)
    op: str
    index: int          # n-th call of this op within the layer
    outputs: tuple[torch.Tensor, ...]


class RecordingOps:
    """Forwards every op to ``ops`` and records its outputs (detached copies)."""

    def __init__(self, ops: OpTable):
        self._ops = ops
        self.calls: list[OpCall] = []
        self.layer = -1
        self._counts: dict[tuple[int, str], int] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        fn = getattr(self._ops, name)
        if not callable(fn):
            return fn

        def record(*args: Any, **kwargs: Any) -> Any:
            out = fn(*args, **kwargs)
            outs = out if isinstance(out, tuple) else (out,)
            key = (self.layer, name)
            self._counts[key] = self._counts.get(key, 0) + 1
            self.calls.append(OpCall(self.layer, name, self._counts[key] - 1,
                                     tuple(o.detach().clone() for o in outs if isinstance(o, torch.Tensor))))
            return out

        return record

    def watch(self, model: torch.nn.Module) -> None:
        """Tag calls with the index of the decoder block they run in."""
        for i, block in enumerate(model.model.layers):
            block.register_forward_pre_hook(lambda m, a, i=i: setattr(self, "layer", i))
        model.model.norm.register_forward_pre_hook(lambda m, a: setattr(self, "layer", -1))

    def reset(self) -> None:
        self.calls.clear()
        self._counts.clear()
        self.layer = -1
