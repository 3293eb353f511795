"""The subprocess side of a conformance run: one backend, a list of cases.

``python -m dsport.conformance.worker JOB.json`` loads one backend, then for
each (op, case id) of the job writes a ``start`` line before calling the
implementation and a ``result`` line after judging it, as JSON lines on the
original stdout. Anything the backend prints goes to stderr, so it cannot
corrupt the stream. If the process dies or hangs, the parent knows from the
last ``start`` line which case did it (see :mod:`dsport.conformance.runner`).

The backend is read through the contract (:mod:`dsport.core.backend`): its
``ENV`` is applied by re-executing the worker once with the variables set;
with ``QUICK_TAGS`` only the quick cases carrying one of those tags run and
every other one is reported ``skip`` with that reason (``--full`` or naming
cases runs them all); a backend that is unavailable here but defines
``contract_ops`` runs those adapters against their contract models, and a
passing case is reported ``contract``, never ``pass``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from ..core.backend import CONTRACT

if TYPE_CHECKING:
    from ..core.backend import BackendModule

log = logging.getLogger(__name__)
ENV_MARK = "DSPORT_CONFORMANCE_ENV_APPLIED"


def load(job: dict[str, Any]) -> BackendModule:
    """The job's backend read through the contract: ``backend_module`` (a dotted
    path) if given, else the registry name ``backend``. Op and model conformance share it."""
    if job.get("backend_module"):
        from ..core.backend import import_backend

        return import_backend(job["backend_module"])
    from ..core.registry import load_backend

    return load_backend(job["backend"])


def _emit(stream: IO[str], **event: Any) -> None:
    stream.write(json.dumps(event, default=str) + "\n")
    stream.flush()


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


def run_case(mod: BackendModule, ref_ops: dict[str, Callable[..., Any]], op: str, case_id: str,
             is_reference: bool = False, ref_cache: str | None = None, case_set: str | None = None,
             contract: bool = False) -> dict[str, Any]:
    """Run and judge one case in this process; returns a result row (no reproduce/machine fields).
    With ``contract`` the backend's ``contract_ops`` run instead of ``OPS`` and a pass is ``contract``."""
    from .guard import InputGuard, uninitialized_memory_filled
    from .metrics import judge
    from ..core.capabilities import query_of
    from ..core.spec import specs

    spec = specs()[op]
    case = next(c for c in spec.cases() if c.id == case_id)
    row: dict[str, Any] = {"op": op, "case": case_id, "tags": sorted(case.tags), "seed": case.seed, "metric": spec.metric}
    args = case.inputs()
    bound = spec.bind(**args)
    dims = spec.validate(bound)
    q = query_of(spec, bound, dims)
    row["shapes"], row["dtypes"], row["params"] = _describe(bound)
    row["dtype"] = str(q.get("dtype", "")).removeprefix("torch.") or None
    row["fp8_format"] = q.get("fp8_format")

    def verdict(v: str, reason: str = "", **extra: Any) -> dict[str, Any]:
        return {**row, "verdict": v, "reason": reason, "metrics": extra.get("metrics", {}),
                "tolerance": extra.get("tolerance", {}), "seconds": extra.get("seconds")}

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
    except NotImplementedError as e:
        return verdict("unsupported", f"raised NotImplementedError: {e}" if str(e) else "raised NotImplementedError")
    except Exception as e:
        tb = traceback.format_exc(limit=-3)
        return verdict("crash", f"raised {type(e).__name__}: {e}", metrics={"traceback": tb}, seconds=time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    broken = guard.violations(outs)
    if broken:
        return verdict("fail", broken, metrics={"inputs": "modified or aliased"}, seconds=seconds)
    j = judge(spec, guard.pristine, dims, outs, refs, check_dtypes=not is_reference)
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


def build_rows(mod: BackendModule, backend: str, target: str, out_dir: str) -> list[dict[str, Any]]:
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    builds = mod.build(target, out_dir)
    secs = (time.perf_counter() - t0) / max(len(builds), 1)
    return [build_row(kb.to_json(), seconds=secs) for kb in builds]


def build_row(kb: dict[str, Any], seconds: float | None = None) -> dict[str, Any]:
    """A KernelBuild record as a result row: built, never pass (it did not run)."""
    status, findings = kb.get("status"), kb.get("findings") or []
    if status == "built":
        verdict = "built"
        reason = "compiled, not executed (no such device here)" + (f"; findings: {', '.join(findings)}" if findings else "")
    elif status == "source":  # lowered, but no toolchain here to compile it: unknown, not failed
        verdict, reason = "skip", f"device source emitted, not compiled here: {kb.get('detail', '')}"
    else:
        verdict, reason = "fail", f"build failed: {kb.get('detail', '')}"
    ops = list(kb.get("ops") or ["(build)"])
    return {"op": ops[0], "ops": ops, "case": f"{kb['target']}:{kb['kernel']}", "tags": ["build"], "seed": None, "metric": "build",
            "shapes": {}, "dtypes": {}, "params": {"target": kb["target"]}, "dtype": None, "fp8_format": None,
            "verdict": verdict, "reason": reason,
            "metrics": {k: kb.get(k) for k in ("artifact", "registers", "spills", "shared_bytes", "matrix_instr", "matrix_found", "hot")},
            "tolerance": {}, "seconds": seconds, "backend": kb.get("backend")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with open(argv[0]) as f:
        job = json.load(f)
    # The protocol owns the original stdout; whatever the backend prints lands on stderr.
    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        mod = load(job)
    except Exception as e:
        # a missing dependency makes a backend unavailable here; any other import error means it is broken
        missing = isinstance(e, ImportError) or type(e).__name__ == "BackendUnavailable"
        frames = traceback.extract_tb(e.__traceback__)
        where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        _emit(proto, event="ready", available=False, broken=not missing, name=job.get("backend"),
              reason=f"import failed: {traceback.format_exception_only(e)[-1].strip()}{where}")
        return 0
    env = dict(mod.env)
    if env and any(os.environ.get(k) != v for k, v in env.items()) and not os.environ.get(ENV_MARK):
        proto.flush()
        os.dup2(proto.fileno(), 1)
        os.execve(sys.executable, [sys.executable, "-m", "dsport.conformance.worker", *argv], {**os.environ, **env, ENV_MARK: "1"})
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
    _emit(proto, event="ready", available=ok or contract or building, broken=broken, name=name, reason=reason,
          ops=sorted(ops), targets=list(mod.targets), env=env, mode=CONTRACT if contract else "run")
    if not (ok or contract or building):
        return 0
    if job.get("build"):
        for target in job["build"]["targets"]:
            _emit(proto, event="start", op="(build)", case=target)
            try:
                rows = build_rows(mod, name, target, os.path.join(job["build"]["out_dir"], name, target))
            except Exception as e:
                rows = [{"op": "(build)", "case": target, "verdict": "crash", "reason": f"build raised {type(e).__name__}: {e}"}]
            _emit(proto, event="result", rows=rows)
        _emit(proto, event="done")
        return 0
    from ..backends import reference

    ref_ops = dict(reference.OPS)
    is_reference = mod.module is reference or name == "reference"
    for op, case_id in job["items"]:
        _emit(proto, event="start", op=op, case=case_id)
        try:
            row = run_case(mod, ref_ops, op, case_id, is_reference, job.get("ref_cache"), job.get("case_set"), contract)
        except Exception as e:  # a harness-side failure on one case must not end the run
            row = {"op": op, "case": case_id, "verdict": "crash", "reason": f"harness error {type(e).__name__}: {e}",
                   "metrics": {"traceback": traceback.format_exc(limit=-4)}}
        _emit(proto, event="result", rows=[row])
    _emit(proto, event="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
