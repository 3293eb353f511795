"""Inputs are sacred (SPEC §10): what the judge checks around one backend call
besides the outputs' values.

* Every tensor argument is snapshotted before the call; afterwards each must
  be bit-identical to its snapshot. A top-k that reuses its logits as scratch,
  or an ``act_quant`` that divides its input in place, fails here, naming the
  argument; and the outputs are judged against the snapshot, never against
  what the backend left behind.
* No output may share storage with an input (``index_cache_unpack`` returning
  a view of the cache it was given): a caller that later writes the cache
  would silently change the "result".

An argument the spec declares ``inplace`` is exempt from both checks.

A case may also ask for torch's uninitialized-memory filling
(:attr:`dsport.core.spec.Case.fill_uninitialized`): ``torch.empty`` then
returns NaN (floats) or the largest integer, so an output slot a backend
forgot to write shows up instead of reading lucky zeros.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from ..core.spec import OpSpec, Tensor


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes, in logical order (NaN payloads and -0 included)."""
    t = t.detach()
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.contiguous().reshape(-1).to(torch.uint8)


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    """(first, last) byte address of the memory a tensor's elements occupy; None when empty."""
    if t.numel() == 0:
        return None
    start = t.data_ptr()
    span = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1
    return start, start + span * t.element_size() - 1


class InputGuard:
    """Snapshot of a call's tensor arguments, taken before the backend runs."""

    def __init__(self, spec: OpSpec, bound: Mapping[str, Any]) -> None:
        self.spec = spec
        self.args = dict(bound)
        self.inplace = {a.name for a in spec.args if isinstance(a, Tensor) and a.inplace}
        self.pristine = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in bound.items()}

    def violations(self, outs: Sequence[Any]) -> str:
        """Why the call broke the input contract ('' when it did not)."""
        why = []
        for name, v in self.args.items():
            if not isinstance(v, torch.Tensor) or name in self.inplace:
                continue
            before = self.pristine[name]
            if v.shape != before.shape or v.dtype != before.dtype:
                why.append(f"input '{name}' was modified in place: now {v.dtype} {tuple(v.shape)}, "
                           f"given {before.dtype} {tuple(before.shape)}")
                continue
            changed = _bits(v) != _bits(before)
            if bool(changed.any()):
                n = int(changed.view(-1, v.element_size()).any(-1).sum()) if v.dtype != torch.bool else int(changed.sum())
                why.append(f"input '{name}' was modified in place ({n} of {v.numel()} elements changed): "
                           "an op must leave its inputs alone")
        for i, o in enumerate(outs):
            if not isinstance(o, torch.Tensor):
                continue
            span = _storage(o)
            for name, v in self.args.items():
                if not isinstance(v, torch.Tensor) or name in self.inplace or span is None:
                    continue
                other = _storage(v)
                same = o.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
                if other is not None and (same or (span[0] <= other[1] and other[0] <= span[1])):
                    label = self._output_name(i)
                    why.append(f"output '{label}' shares memory with input '{name}' (a view or an in-place result): "
                               "outputs must never alias inputs")
        return "; ".join(why)

    def _output_name(self, i: int) -> str:
        declared = self.spec.outputs_for(self.args)
        return declared[i].name if i < len(declared) else str(i)


@contextlib.contextmanager
def uninitialized_memory_filled(on: bool) -> Iterator[None]:
    """torch.empty returns NaN / max-int while inside, when ``on``; restores the previous settings."""
    if not on:
        yield
        return
    import torch.utils.deterministic as det

    prev_det, prev_warn, prev_fill = (torch.are_deterministic_algorithms_enabled(),
                                      torch.is_deterministic_algorithms_warn_only_enabled(), det.fill_uninitialized_memory)
    # warn_only: an op without a deterministic kernel still runs; the point here is the filling.
    # torch.use_deterministic_algorithms also imports torch._inductor's config (1.5 s per worker);
    # its C setter alone is what the filling needs.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None) or torch.use_deterministic_algorithms
    setter(True, warn_only=True)
    det.fill_uninitialized_memory = True
    try:
        yield
    finally:
        det.fill_uninitialized_memory = prev_fill
        setter(prev_det, warn_only=prev_warn)
