"""Conformance of the cuda backend ON the GPU, for a machine that has one:
every case of every op the backend serves is generated from its seed on the
CPU, its tensors are moved to the device, the op runs there, and the outputs
are judged on the CPU against the float64 reference by the conformance judge.
Rows carry the device name and which implementation ran: the own kernel, and
separately the FlashMLA/DeepGEMM adapter where that library is importable, so
a machine with both checks both. Verdicts: pass/fail (executed on that
device), unsupported (outside CAPABILITIES), crash.

    python -m dsport.backends.cuda.device_check --json out.json --markdown out.md

Here (no GPU) it exits 2 with the reason: nothing was checked.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from typing import Any

import torch


def _to(x: Any, device: str) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else x


def _cpu(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_cpu(v) for v in x)
    return x.cpu() if isinstance(x, torch.Tensor) else x


def run(ops_filter: set[str] | None = None) -> tuple[list[dict[str, Any]], str]:
    from .. import cuda
    from . import launch
    from ...core.backend import from_module
    from ...core.capabilities import query_of
    from ...core.spec import specs

    ok, reason = cuda.available()
    if not ok:
        raise SystemExit(f"cuda backend unavailable: {reason}")
    b = from_module(cuda)
    device = torch.cuda.get_device_name()
    rows = []
    vendor = cuda.vendor_ops()
    impls = [(op, "own", fn) for op, fn in cuda.own_ops().items()]
    impls += [(op, "FlashMLA" if op.startswith("sparse_mla") else "DeepGEMM", fn) for op, fn in vendor.items()]
    for op, impl, fn in sorted(impls, key=lambda x: (x[0], x[1])):
        if ops_filter and op not in ops_filter:
            continue
        spec = specs()[op]
        for case in spec.cases():
            args = case.inputs()
            bound = spec.bind(**args)
            dims = spec.validate(bound)
            q = {**query_of(spec, bound, dims), "device": "cuda"}
            row = {"backend": "cuda", "impl": impl, "device": device, "op": op, "case": case.id, "seed": case.seed}
            why = b.refusal(op, q, {op: fn})
            if why:
                rows.append({**row, "verdict": "unsupported", "reason": "; ".join(why)})
                continue
            if impl == "own" and op.startswith("sparse_mla"):
                name = launch.sparse_kernel("bf16", dims["H"])[0]
                rows.append(_check(spec, bound, dims, args, fn, {**row, "impl": f"own ({name})"}, contextlib.nullcontext()))
                if "wgmma" in name:  # the CUDA-core kernel on the same case: both are checked where both apply
                    rows.append(_check(spec, bound, dims, args, fn, {**row, "impl": "own (CUDA cores)"}, launch.cuda_core_only()))
                continue
            rows.append(_check(spec, bound, dims, args, fn, row, contextlib.nullcontext()))
    return rows, device


def _check(spec, bound, dims, args, fn, row, context) -> dict[str, Any]:
    """Run one case on the device within ``context`` and judge it on the CPU: the row with its verdict."""
    from .. import reference
    from ...conformance.metrics import judge

    try:
        with context:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs = fn(**{k: _to(v, "cuda") for k, v in args.items()})
            torch.cuda.synchronize()
            secs = time.perf_counter() - t0
    except NotImplementedError as e:  # refusal() accepted the case: a limit CAPABILITIES does not declare
        return {**row, "verdict": "crash", "reason": f"undeclared limit (refusal accepted the case): {e}"}
    except Exception as e:  # noqa: BLE001 - a crash is a row, never the end of the run
        return {**row, "verdict": "crash", "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=-3)}
    outs = _cpu(outs if isinstance(outs, tuple) else (outs,))
    refs = reference.OPS[spec.name](**args)
    j = judge(spec, bound, dims, outs, refs if isinstance(refs, tuple) else (refs,), check_dtypes=True)
    return {**row, "verdict": "pass" if j.ok else "fail", "reason": j.reason, "seconds": secs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsport.backends.cuda.device_check")
    p.add_argument("--json")
    p.add_argument("--markdown")
    p.add_argument("--ops", nargs="*")
    a = p.parse_args(argv)
    try:
        rows, device = run(set(a.ops) if a.ops else None)
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 2
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": device, "rows": rows}, f, indent=1, default=str)
    lines = [f"cuda backend on {device} ({time.strftime('%Y-%m-%d')})", "", "| op | impl | case | verdict | reason |", "|---|---|---|---|---|"]
    lines += [f"| {r['op']} | {r['impl']} | {r['case']} | {r['verdict']} | {r.get('reason', '')[:160]} |" for r in rows]
    text = "\n".join(lines)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    print(text)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("pass", "fail", "crash", "unsupported")}
    print(counts)
    return 1 if counts["fail"] or counts["crash"] or not counts["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
