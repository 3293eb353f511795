"""The profile run: for each op x backend x phase, the accuracy gate first,
then (only if it passed) timing and the roofline placement.

A case that fails the gate, crashes, or is not implemented gets a row with no
timing at all: a speed-up that breaks accuracy is never reported as one."""
from __future__ import annotations

import gc
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backend import BackendModule
from ..capabilities import query_of
from . import gate
from .hardware import Roofline
from .roofline import math_class, place
from .shapes import ProfileCase, describe_shapes
from .timing import time_call
from ..spec import specs

log = logging.getLogger(__name__)


@dataclass
class ProfilePlan:
    backends: dict[str, BackendModule]
    cases: list[ProfileCase]
    roof: Roofline
    reference: BackendModule
    device: str = "cpu"
    warmup: int = 1
    repeats: int = 5
    min_repeats: int = 3
    budget_s: float = 2.0
    llc_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def _to(args: dict[str, Any], device: str) -> dict[str, Any]:
    if device == "cpu":
        return args
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}


def _query(spec: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The capability facts of the profiled call (dtype, fp8 format, heads, top-k, page size)."""
    bound = spec.bind(**args)
    return query_of(spec, bound, spec.validate(bound))


def _structure(spec: Any, bound: dict[str, Any], outs: tuple, is_reference: bool) -> str:
    """What is wrong with the outputs of the profiled call that needs no reference to see."""
    dims = spec.validate(bound)
    declared = spec.outputs_for(bound)
    if len(outs) != len(declared):
        return f"{len(outs)} outputs, the spec declares {len(declared)}"
    for o, x, shape in zip(declared, outs, spec.output_shapes(bound, dims)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
            return f"output '{o.name}' is {tuple(getattr(x, 'shape', ()))}, the spec says {tuple(shape)}"
        want = o.dtype_for(bound)
        if not is_reference and x.dtype != want:
            return f"output '{o.name}' has dtype {x.dtype}, the spec says {want}"
        if x.is_floating_point() and x.dtype.itemsize > 1 and bool(torch.isnan(x).any()):
            return f"output '{o.name}' holds NaN"
    return ""


def _row(pc: ProfileCase, backend: str, **kw: Any) -> dict[str, Any]:
    return {"backend": backend, "op": pc.op, "phase": pc.phase, "case": pc.id, "scale": pc.scale,
            "shapes": None, "flops": None, "bytes": None, "timing": None, "perf": None, **kw}


def run(plan: ProfilePlan, on_row: Callable[[dict[str, Any]], None] = lambda r: None) -> list[dict[str, Any]]:
    table = specs()
    rows: list[dict[str, Any]] = []
    for pc in plan.cases:
        spec = table[pc.op]
        check_args = pc.check.inputs()
        checked_at = "the profiled shape" if pc.checked_at_profiled_shape else describe_shapes(check_args)
        refs: tuple | None = None
        ref_error = ""
        if pc.op in plan.reference.ops:
            try:
                refs = gate.as_tuple(plan.reference.ops[pc.op](**pc.check.inputs()))
            except Exception as e:  # the oracle failing leaves the case unjudgeable, not failed
                ref_error = f"reference raised {type(e).__name__}: {e}"
        else:
            ref_error = "no reference implementation: nothing to judge against"
        case_args = pc.case.inputs()
        # the cases are made on the CPU, but the backends are asked about the device the call runs on
        query = {**_query(spec, case_args), "device": torch.device(plan.device).type}
        timed_args: dict[str, Any] | None = None
        for name, mod in plan.backends.items():
            acc = {"verdict": "skip", "reason": "", "metrics": {}, "checked_at": checked_at, "judge": gate.SOURCE}
            impl = mod.ops.get(pc.op)
            refused = mod.refusal(pc.op, query)
            if impl is None:
                acc.update(verdict="unsupported", reason=f"{name} does not implement {pc.op}")
            elif refused:
                acc.update(verdict="unsupported", reason="; ".join(refused))
            elif refs is None:
                acc.update(reason=ref_error)
            else:
                try:
                    ok, reason, metrics = gate.check(spec, _to(pc.check.inputs(), plan.device), impl, refs,
                                                     is_reference=mod.module is plan.reference.module)
                    acc.update(verdict="pass" if ok else "fail", reason=reason, metrics=metrics)
                except Exception as e:
                    acc.update(verdict="crash", reason=f"raised {type(e).__name__}: {e}",
                               metrics={"traceback": traceback.format_exc(limit=-3)})
            row = _row(pc, name, accuracy=acc)
            if acc["verdict"] == "pass":
                if timed_args is None:
                    timed_args = _to(case_args, plan.device)
                bound = spec.bind(**timed_args)
                flops, nbytes = spec.cost(bound)
                row.update(shapes=describe_shapes(timed_args), flops=flops, bytes=nbytes)
                try:
                    # the first call at the profiled shape doubles as a warm-up and is checked for structure:
                    # output shapes and dtypes per the spec, and no NaN from finite inputs
                    wrong = _structure(spec, bound, gate.as_tuple(impl(**timed_args)), is_reference=mod.module is plan.reference.module)
                    if wrong:
                        acc.update(verdict="fail", reason=f"at the profiled shape: {wrong}")
                        row.update(shapes=None, flops=None, bytes=None)
                        rows.append(row)
                        on_row(row)
                        continue
                    t = time_call(impl, timed_args, max(plan.warmup - 1, 0), plan.repeats, plan.min_repeats, plan.budget_s, plan.llc_bytes)
                    t.warmup += 1  # the structure-checked call above
                    row["timing"] = t.to_json()
                    row["perf"] = place(flops, nbytes, t.median_s, plan.roof, math_class(spec, bound))
                except Exception as e:  # passed at the check shape, died at the profiled one
                    acc.update(verdict="crash", reason=f"at the profiled shape: raised {type(e).__name__}: {e}")
            rows.append(row)
            on_row(row)
        del timed_args, case_args
        gc.collect()
    return rows
