"""Checks of the npu adapters that conformance rows do not cover, as JSON:

* ``schemas``: every torch_npu call the adapters make (recorded over the
  contract models) and every contract model's signature against the schemas
  of a torch_npu: the installed one's yaml (found without importing it) or a
  wheel file.
* ``fused-indexer``: :func:`~dsport.npu_kernels.adapters.lightning_indexer_topk`
  against dsport's reference indexer + top-k, over the contract models or
  (``--lib torch_npu``, on Ascend) the real kernel.

    python -m dsport.npu_kernels.ascend_checks schemas --wheel torch_npu-2.13.0-...whl
    python -m dsport.npu_kernels.ascend_checks schemas --installed --json schemas.json
    python -m dsport.npu_kernels.ascend_checks fused-indexer --lib torch_npu --json fused.json

Exit status 1 when anything disagrees, 2 when nothing could be checked.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch

from . import adapters, contract_models as M, layouts
from . import schema as S

ADAPTER_CASES = (("sparse_mla_prefill", "small"), ("sparse_mla_decode", "fp8-page64"), ("sparse_mla_decode", "float-576"),
                 ("rms_norm", "tiny"), ("rms_norm", "residual"), ("rope", "mla-q-pe"), ("rope", "indexer-q"),
                 ("moe_gate", "ds-routing"), ("moe_gate", "no-bias"), ("moe_grouped_gemm_contiguous", "tiny"),
                 ("moe_grouped_gemm_masked", "tiny"), ("moe_experts", "tiny"))


@functools.lru_cache(maxsize=1)
def recorded_calls() -> tuple[tuple[str, tuple, dict], ...]:
    """Every vendor call of every adapter path, run once over recording contract models."""
    from ..core.spec import specs

    rec = S.Recorder(M.MODELS)
    ops = adapters.make_ops(rec)
    for op, case in ADAPTER_CASES:
        ops[op](**next(c for c in specs()[op].cases() if c.id == case).inputs())
    g = torch.Generator().manual_seed(0)
    q, k, w = torch.randn(6, 4, 128, generator=g).bfloat16(), torch.randn(40, 128, generator=g).bfloat16(), torch.randn(6, 4)
    zeros = torch.zeros(6, dtype=torch.int32)
    adapters.lightning_indexer_topk(rec, q, k, w, zeros, torch.full((6,), 40, dtype=torch.int32), 8)  # one batch, TND
    adapters.lightning_indexer_topk(rec, q, k, w, zeros, torch.tensor([3, 9, 40, 0, 17, 5], dtype=torch.int32), 8)  # PA_BSND
    return tuple(rec.calls)


def installed_schema_text() -> str:
    spec = importlib.util.find_spec("torch_npu")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("torch_npu is not installed")
    return (Path(list(spec.submodule_search_locations)[0]).parent / S.SCHEMA_PATH).read_text()


def check_schemas(schemas: dict[str, S.Schema]) -> dict[str, Any]:
    problems: dict[str, list[str]] = {}
    for name, fn in M.MODELS.items():
        if name not in schemas:
            problems.setdefault(name, []).append("not registered")
        else:
            problems.setdefault(name, []).extend(f"model signature: {p}" for p in S.check_signature(schemas[name], fn))
    calls = recorded_calls()
    for name, args, kwargs in calls:
        if name in schemas:
            problems.setdefault(name, []).extend(f"call: {p}" for p in S.check_call(schemas[name], args, kwargs))
    return {"ops": sorted(M.MODELS), "calls": len(calls), "problems": {k: v for k, v in problems.items() if v}}


def check_fused_indexer(lib: Any, device: str) -> dict[str, Any]:
    from ..backends import reference
    from ..conformance.metrics import topk as judge

    rows = []
    for fmt, window, topk in (("e4m3fn", "full", 16), ("e4m3fnuz", "causal", 32), (None, "causal", 8),
                              ("e4m3fn", "ragged", 24), (None, "ragged", 2048)):
        g = torch.Generator().manual_seed(7)
        t, s, h = 12, 300, 8
        q = (torch.randn(t, h, 128, generator=g) * 50).clamp(-448, 448)
        k = (torch.randn(s, 128, generator=g) * 50).clamp(-448, 448)
        w = torch.randn(t, h, generator=g) * (h ** -0.5 * 128 ** -0.5)
        scale = None
        if fmt:
            dt = torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e4m3fnuz
            q, k, scale = q.to(dt), k.to(dt), torch.exp2(torch.randint(-8, -3, (s,), generator=g).float())
        else:
            q, k = q.bfloat16(), k.bfloat16()
        ks = torch.zeros(t, dtype=torch.int32)
        ke = {"full": torch.full((t,), s, dtype=torch.int32), "causal": layouts.right_down_causal_ends(t, s),
              "ragged": torch.randint(0, s + 1, (t,), generator=g).int()}[window]
        mv = (lambda x: x if x is None else x.to(device))
        got = adapters.lightning_indexer_topk(lib, mv(q), mv(k), mv(w), mv(ks), mv(ke), topk, k_scale=mv(scale)).cpu()
        logits = reference.OPS["indexer_logits"](q=q, k=k, weights=w, ks=ks, ke=ke, k_scale=scale)
        j = judge(got, reference.OPS["topk_select"](logits=logits, k=topk, ks=ks, ke=ke), logits, ks, ke)
        rows.append({"fmt": fmt, "window": window, "topk": topk, "ok": j.ok, "reason": j.reason})
    return {"lib": getattr(lib, "__name__", str(lib)), "device": device, "cases": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dsport.npu_kernels.ascend_checks", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sc = sub.add_parser("schemas")
    src = sc.add_mutually_exclusive_group(required=True)
    src.add_argument("--wheel", type=Path)
    src.add_argument("--installed", action="store_true")
    fi = sub.add_parser("fused-indexer")
    fi.add_argument("--lib", choices=("contract", "torch_npu"), default="contract")
    for p in (sc, fi):
        p.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.what == "schemas":
        try:
            text = installed_schema_text() if a.installed else None
            schemas = S.load_schemas(text) if text is not None else S.schemas_from_wheel(a.wheel)
        except (OSError, KeyError) as e:
            print(f"ascend_checks schemas: nothing checked: {e}", file=sys.stderr)
            return 2
        report = check_schemas(schemas)
        ok = not report["problems"]
    else:
        if a.lib == "torch_npu":
            import torch_npu  # noqa: F401 - registers the npu device and its ops
            lib, device = torch_npu, "npu"
        else:
            lib, device = M, "cpu"
        report = check_fused_indexer(lib, device)
        ok = all(r["ok"] for r in report["cases"])
    text = json.dumps({**report, "ok": ok}, indent=2)
    if a.json:
        a.json.write_text(text + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
