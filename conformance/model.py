"""Model conformance rows: the DeepSeek-V3.2 graph run end to end on each
backend against the float64 reference (``dsport conformance --model``).

Each backend runs in its own subprocess (``python -m
dsport.conformance.model JOB.json``), with the backend's ``ENV`` applied
before import, as in the op-level worker. Ops a backend lacks are served by
its fallback chain, and the row says which: model conformance judges the
backend as a deployable table, while the op rows judge each kernel alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_MARK = "DSPORT_MODEL_ENV_APPLIED"
DECODE_STEPS = 16
# the median step: a near-tied expert or top-k key may flip on one step (see core/model/compare.py)
MIN_DECODE_MEDIAN = 0.999


def _row(backend: str, case: str, verdict: str, reason: str, metrics: dict[str, Any], seconds: float | None,
         checkpoint: str | None = None) -> dict[str, Any]:
    again = ["dsport", "conformance", "--model", "--backends", backend] + (["--checkpoint", checkpoint] if checkpoint else [])
    return {"backend": backend, "op": "(model)", "case": case, "tags": ["model"], "seed": None, "metric": "model",
            "shapes": {}, "dtypes": {}, "params": {}, "dtype": metrics.get("precision"), "fp8_format": None,
            "verdict": verdict, "reason": reason, "metrics": metrics, "tolerance": {}, "seconds": seconds,
            "reproduce": " ".join(again)}


def model_rows(backends: list[str], checkpoint: str | None, prompt_len: int = 80, timeout: float = 600.0) -> list[dict[str, Any]]:
    """One row per backend: logits agreement and the first op call out of tolerance."""
    from dsport.core.model import tiny_config
    from dsport.core.model.weights import make_checkpoint

    ckpt = checkpoint or str(make_checkpoint(tempfile.mkdtemp(prefix="dsport-ckpt-"), tiny_config(n_layers=2), seed=1))
    rows = []
    for backend in backends:
        case = f"{Path(ckpt).name}/prefill-{prompt_len}"
        with tempfile.TemporaryDirectory() as tmp:
            job, out = Path(tmp) / "job.json", Path(tmp) / "row.json"
            job.write_text(json.dumps({"backend": backend, "checkpoint": ckpt, "given_checkpoint": checkpoint, "prompt_len": prompt_len,
                                       "out": str(out), "case": case}))
            t0 = time.perf_counter()
            try:
                r = subprocess.run([sys.executable, "-m", "dsport.conformance.model", str(job)], capture_output=True, text=True,
                                   timeout=timeout)
            except subprocess.TimeoutExpired:
                rows.append(_row(backend, case, "timeout", f"no result within {timeout:.0f} s", {}, timeout, checkpoint))
                continue
            if out.exists():
                rows.append(json.loads(out.read_text()))
            else:
                why = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
                rows.append(_row(backend, case, "crash", f"exit {r.returncode}: {why}", {}, time.perf_counter() - t0, checkpoint))
    return rows


def _main(job_path: str) -> int:
    import torch

    from dsport.core.registry import load_backend, resolve

    job = json.loads(Path(job_path).read_text())
    backend, case = job["backend"], job["case"]
    mod = load_backend(backend)
    env = dict(mod.env)
    if env and any(os.environ.get(k) != v for k, v in env.items()) and not os.environ.get(ENV_MARK):
        os.execve(sys.executable, [sys.executable, "-m", "dsport.conformance.model", job_path], {**os.environ, **env, ENV_MARK: "1"})
    ok, reason = mod.available()
    given = job.get("given_checkpoint")
    if not ok:
        row = _row(backend, case, "skip", f"backend unavailable: {reason}", {}, None, given)
    else:
        from dsport.core.errors import ValidationError
        from dsport.core.model.compare import compare

        t0 = time.perf_counter()
        # the model runs in float32 here: ops whose declared capabilities exclude it fall back at resolve time
        ops = resolve({"backend": backend, "fallback": "fallback", "dtype": "float32"})
        borrowed = sorted({b for op, b in ops.served_by.items() if b != backend})
        tokens = torch.randint(0, 2 ** 31 - 1, (1, job["prompt_len"]), generator=torch.Generator().manual_seed(0))
        from dsport.core.model.config import load_config

        tokens %= load_config(job["checkpoint"]).vocab_size
        try:
            rep = compare(job["checkpoint"], ops, tokens)
        except ValidationError as e:
            if e.arg != "(capability)":
                raise
            # a per-call limit (head count, topk multiple) that resolve-time filtering cannot see
            row = _row(backend, case, "unsupported", f"the model's shapes are outside a declared limit: {e}", {}, None, given)
            Path(job["out"]).write_text(json.dumps(row, default=str))
            return 0
        f = rep.first_failure
        from dsport.core.model import Model
        from dsport.core.model.compare import decode_consistency

        # decode through the caches must equal a re-prefill (16 steps, as a serving loop would)
        cos = decode_consistency(Model.from_pretrained(job["checkpoint"], ops=ops, dtype=torch.float32), tokens, DECODE_STEPS)[0]
        metrics = {"logits_cosine_median": rep.logits_cosine_median, "logits_cosine_min": rep.logits_cosine_min,
                   "top1_agreement": rep.top1_agreement, "ops_checked": rep.ops_checked, "precision": rep.precision,
                   "fallback_from": borrowed, "served_by": ops.served_by, "decode_steps": DECODE_STEPS,
                   "decode_vs_reprefill_cos_median": cos.median().item(), "decode_vs_reprefill_cos_min": cos.min().item()}
        if f is not None:
            metrics["first_failure"] = {"layer": f.layer, "op": f.op, "call": f.index, "metrics": f.metrics}
        why = (f"layer {f.layer}, op {f.op} (call {f.index}): {f.reason}" if f is not None
               else f"every op call within tolerance; median logits cosine {rep.logits_cosine_median:.5f}")
        decode_ok = cos.median().item() >= MIN_DECODE_MEDIAN
        why += f"; {DECODE_STEPS} decode steps vs re-prefill: median cosine {cos.median().item():.5f}"
        if borrowed:
            why += f"; ops without a {backend} kernel ran on {', '.join(borrowed)}"
        verdict = rep.verdict if decode_ok else "fail"
        row = _row(backend, case, verdict, why, metrics, time.perf_counter() - t0, given)
    Path(job["out"]).write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
