"""The subprocess side of a conformance run: one backend, a list of cases.

``python -m dsport.conformance.worker JOB.json`` loads one backend, then for
each (op, case id, seed) of the job writes a ``start`` event before calling the
implementation and a ``result`` event after judging it (the protocol of
:mod:`dsport.conformance.process`). If the process dies or hangs, the parent
knows from the last ``start`` which case did it (see :mod:`dsport.conformance.runner`).

The backend is read through the contract (:mod:`dsport.core.backend`): its
``ENV`` is applied by re-executing the worker once with the variables set;
with ``QUICK_TAGS`` only the quick cases carrying one of those tags run and
every other one is reported ``skip`` with that reason (``--full`` or naming
cases runs them all); a backend that is unavailable here but defines
``contract_ops`` runs those adapters against their contract models, and a
passing case is reported ``contract``, never ``pass``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .process import apply_env, emit, protocol_stream
from .row import Item, ResultRow
from ..core.backend import CONTRACT

if TYPE_CHECKING:
    from .device import RunDevice
    from ..core.backend import BackendModule
    from ..core.spec import Case

log = logging.getLogger(__name__)


def load(job: dict[str, Any]) -> BackendModule:
    """The job's backend read through the contract: ``backend_module`` (a dotted
    path) if given, else the registry name ``backend``. Op and model conformance share it."""
    if job.get("backend_module"):
        from ..core.backend import import_backend

        return import_backend(job["backend_module"])
    from ..core.registry import load_backend

    return load_backend(job["backend"])


def _describe(bound: dict[str, Any]) -> tuple[dict[str, list[int]], dict[str, str], dict[str, str]]:
    import torch

    shapes, dtypes, params = {}, {}, {}
    for k, v in bound.items():
        if isinstance(v, torch.Tensor):
            shapes[k] = list(v.shape)
            dtypes[k] = str(v.dtype).removeprefix("torch.")
        elif v is not None:
            params[k] = str(v)
    return shapes, dtypes, params


def _tuple(x: Any) -> tuple:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def reference_outputs(ref: Callable[..., Any], case: Any, cache_dir: str | None) -> tuple:
    """The reference's outputs for a case, computed once per run: the float64
    reference is often slower than the backend under test, and every backend
    of a run is judged on the same outputs."""
    import torch

    if not cache_dir:
        return _tuple(ref(**case.inputs()))
    path = os.path.join(cache_dir, f"{case.op}--{case.id}--{case.seed}.pt")
    # Workers of one run share the cache; the first to need a case computes it (holding a lock
    # file with its pid), the others wait for the file instead of computing the same thing.
    lock = path + ".lock"
    while not os.path.exists(path):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _holder_alive(lock):
                _unlink(lock)  # its holder was killed (a timeout, a crash): take over
            time.sleep(0.01)
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            outs = _tuple(ref(**case.inputs()))
            tmp = f"{path}.{os.getpid()}.tmp"
            torch.save(list(outs), tmp)
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
            return outs
        finally:
            _unlink(lock)
    return tuple(torch.load(path))


def _holder_alive(lock: str) -> bool:
    try:
        with open(lock) as f:
            pid = int(f.read() or 0)
    except (OSError, ValueError):
        return True  # being written right now
    if not pid:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_CASES: dict[str, dict[str, Case]] = {}


def case_of(op: str, case_id: str) -> Case:
    """The spec's case of that id; an op's cases are built once per process, not once per case."""
    from ..core.spec import specs

    if op not in _CASES:
        _CASES[op] = {c.id: c for c in specs()[op].cases()}
    return _CASES[op][case_id]


def run_case(mod: BackendModule, ref_ops: dict[str, Callable[..., Any]], op: str, case_id: str,
             is_reference: bool = False, ref_cache: str | None = None, case_set: str | None = None,
             contract: bool = False, device: RunDevice | None = None) -> ResultRow:
    """Run and judge one case in this process; returns its row (the runner places it: backend, reproduce).
    With ``contract`` the backend's ``contract_ops`` run instead of ``OPS`` and a pass is ``contract``.
    With ``device`` the inputs move there (same layout) before the capability query and the call, the
    input checks run on the device tensors, and outputs must come back on it; the judge runs on the CPU."""
    from .guard import InputGuard, uninitialized_memory_filled
    from .metrics import judge
    from ..core.capabilities import query_of
    from ..core.spec import specs

    spec = specs()[op]
    case = case_of(op, case_id)
    args = case.inputs()
    notes: list[str] = []
    if device is not None:
        from .device import inputs_on, stray_outputs, synchronize, to_cpu

        args, notes = inputs_on(args, device.device)
    bound = spec.bind(**args)
    dims = spec.validate(bound)
    q = query_of(spec, bound, dims)
    row = ResultRow.for_case(op, case, spec.metric, _describe(bound), q)
    if device is not None:
        row = dataclasses.replace(row, run_device={**device.to_json(), **({"layout": "; ".join(notes)} if notes else {})})
    verdict = row.judged

    ops = contract_table(mod) if contract else mod.ops
    impl = ops.get(op)
    if impl is None:
        return verdict("unsupported", "not implemented by this backend" + (" (no contract model)" if contract else ""))
    quick_tags = mod.quick_tags
    if case_set == "quick" and quick_tags and not quick_tags & case.tags:
        return verdict("skip", f"outside this backend's quick set here (cases tagged {sorted(quick_tags)}); --full runs it")
    reasons = mod.refusal(op, q, ops)
    if reasons:
        return verdict("unsupported", "; ".join(reasons))
    if op not in ref_ops:
        return verdict("skip", f"no reference implementation of {op} yet: nothing to judge against")
    try:
        refs = reference_outputs(ref_ops[op], case, ref_cache)
    except Exception as e:  # the oracle failing is not the backend's fault: the case cannot be judged
        return verdict("skip", f"reference raised {type(e).__name__}: {e}")
    guard = InputGuard(spec, bound)
    t0 = time.perf_counter()
    try:
        with uninitialized_memory_filled(case.fill_uninitialized):
            outs = _tuple(impl(**args))
            if device is not None:
                synchronize(device.device)
    except NotImplementedError as e:
        return verdict("unsupported", f"raised NotImplementedError: {e}" if str(e) else "raised NotImplementedError")
    except Exception as e:
        tb = traceback.format_exc(limit=-3)
        return verdict("crash", f"raised {type(e).__name__}: {e}", metrics={"traceback": tb}, seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if device is not None:
        stray = stray_outputs(outs, device.device, [o.name for o in spec.outputs_for(bound)])
        if stray:
            return verdict("fail", stray, metrics={"outputs": "on the wrong device"}, seconds=seconds)
    broken = guard.violations(outs)
    if broken:
        return verdict("fail", broken, metrics={"inputs": "modified or aliased"}, seconds=seconds)
    pristine = guard.pristine
    if device is not None:
        outs, pristine = to_cpu(outs), to_cpu(pristine)
    j = judge(spec, pristine, dims, outs, refs, check_dtypes=not is_reference)
    passed = CONTRACT if contract else "pass"
    return verdict(passed if j.ok else "fail", j.reason, metrics=j.metrics, tolerance=j.tolerance, seconds=seconds)


_CONTRACT_TABLES: dict[int, dict[str, Callable[..., Any]]] = {}


def contract_table(mod: BackendModule) -> dict[str, Callable[..., Any]]:
    """The backend's contract-model op table, built once per process."""
    if mod.contract_ops is None:
        return {}
    key = id(mod.module)
    if key not in _CONTRACT_TABLES:
        _CONTRACT_TABLES[key] = dict(mod.contract_ops())
    return _CONTRACT_TABLES[key]


def build_rows(mod: BackendModule, target: str, out_dir: str) -> list[ResultRow]:
    """Every kernel of ``target`` built into ``out_dir``, one row each."""
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    builds = mod.build(target, out_dir)
    secs = (time.perf_counter() - t0) / max(len(builds), 1)
    return [ResultRow.build(kb.to_json(), seconds=secs) for kb in builds]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        job = json.load(f)
    proto = protocol_stream()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        mod = load(job)
    except Exception as e:
        # a missing dependency makes a backend unavailable here; any other import error means it is broken
        missing = isinstance(e, ImportError) or type(e).__name__ == "BackendUnavailable"
        frames = traceback.extract_tb(e.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        emit(proto, event="ready", available=False, broken=not missing, name=job.get("backend"),
              reason=f"import failed: {traceback.format_exception_only(e)[-1].strip()}{where}")
        return 0
    env = dict(mod.env)
    apply_env(env, "dsport.conformance.worker", argv, proto)
    name = mod.name
    ok, reason, broken = mod.availability()
    # ahead-of-time builds need a toolchain, not the device: they run where the backend cannot
    building = bool(job.get("build")) and mod.can_build and not broken
    # unavailable here, but its adapters can be checked against contract models (never for builds)
    contract = not ok and not broken and mod.contract_ops is not None and not job.get("build")
    if contract:
        reason = f"{reason}; adapters run against contract models (verdict 'contract')"
    elif building and not ok:
        reason = f"{reason}; builds need no device (verdict 'built')"
    ops = contract_table(mod) if contract else mod.ops
    emit(proto, event="ready", available=ok or contract or building, broken=broken, name=name, reason=reason,
          ops=sorted(ops), targets=list(mod.targets), env=env, mode=CONTRACT if contract else "run")
    if not (ok or contract or building):
        return 0
    if job.get("build"):
        for target in job["build"]["targets"]:
            emit(proto, event="start", op="(build)", case=target)
            try:
                rows = build_rows(mod, target, os.path.join(job["build"]["out_dir"], name, target))
            except Exception as e:
                rows = [ResultRow.lost(Item("(build)", target), "crash", f"build raised {type(e).__name__}: {e}")]
            emit(proto, event="result", rows=[r.to_json() for r in rows])
        emit(proto, event="done")
        return 0
    from ..backends import reference

    ref_ops = dict(reference.OPS)
    is_reference = mod.module is reference or name == "reference"
    device = None
    if job.get("device"):
        from .device import resolve

        device = resolve(job["device"])
    for item in map(Item._make, job["items"]):
        emit(proto, event="start", op=item.op, case=item.case)
        try:
            row = run_case(mod, ref_ops, item.op, item.case, is_reference, job.get("ref_cache"), job.get("case_set"), contract,
                           device)
        except Exception as e:  # a harness-side failure on one case must not end the run
            row = ResultRow.lost(item, "crash", f"harness error {type(e).__name__}: {e}",
                                 metrics={"traceback": traceback.format_exc(limit=-4)})
        emit(proto, event="result", rows=[row.to_json()])
    emit(proto, event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
