"""Model conformance rows: the DeepSeek-V3.2 graph run end to end on each
backend against the float64 reference (``dsport conformance --model``).

Without ``--checkpoint`` two small random checkpoints are written (and
removed afterwards), each a case:

* ``v32-fp8``: V3.2 with FP8 weights, the 656-byte FP8 latent cache
  (``mla_cache_pack``, FP8 ``sparse_mla_decode``) and the paged FP8 indexer
  key cache (``index_cache_pack``, ``indexer_logits_paged`` at decode); the
  prompt is 4x ``index_topk``, so selection is really sparse and a top-k bug
  moves the result;
* ``v3-dense-grouped``: a V3-style dense config (no indexer,
  ``mla_decode_dense``) whose MoE runs as grouped GEMMs
  (``moe_grouped_gemm_contiguous``).

Each prefills, then decodes 16 greedy steps through the caches; every op call
of both phases is replayed through the reference on the same arguments, so a
failure names its phase, layer and op, and decode must equal a re-prefill.

Each backend runs in its own subprocess (``python -m
dsport.conformance.model JOB.json``, through :mod:`dsport.conformance.process`
as the op-level worker), with the backend's ``ENV`` applied before import;
``--backend-module`` modules run the same way. Ops a backend lacks are served by the fallback chain, and the
row says which: model conformance judges the backend as a deployable table,
while the op rows judge each kernel alone.
"""
from __future__ import annotations

import json
import queue
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .process import Worker, apply_env, emit, protocol_stream
from .row import ResultRow

if TYPE_CHECKING:
    from ..core.backend import BackendModule

DECODE_STEPS = 16
EXECUTED = ("pass", "fail", "crash", "timeout")


@dataclass(frozen=True)
class Scenario:
    """One model case: a config to write, the options to run it with, the prompt length."""

    name: str
    config: dict[str, Any]
    prompt_len: int
    options: dict[str, str] = field(default_factory=dict)


def scenarios() -> list[Scenario]:
    topk = 32
    return [
        Scenario("v32-fp8", dict(n_layers=2, kv_lora_rank=512, index_topk=topk), 4 * topk, {"kv_cache": "fp8"}),
        Scenario("v3-dense-grouped", dict(n_layers=2, index_n_heads=0, fp8_weights=False), 64, {"moe": "grouped"}),
    ]


def _again(backend: str, module: str | None, checkpoint: str | None) -> list[str]:
    who = ["--backend-module", module] if module else ["--backends", backend]
    return ["dsport", "conformance", "--model", *who] + (["--checkpoint", checkpoint] if checkpoint else [])


def model_rows(backends: list[str], checkpoint: str | None, timeout: float = 600.0, modules: list[str] | None = None,
               only: list[str] | None = None, prompt_len: int | None = None) -> list[ResultRow]:
    """One row per backend (or backend module) and case: logits agreement, decode
    against re-prefill, and the first op call out of tolerance. ``only`` narrows
    the built-in cases by name; ``prompt_len`` replaces each case's prompt length
    (4 x index_topk by default: shorter prompts select every key)."""
    from ..core.model import tiny_config
    from ..core.model.config import load_config
    from ..core.model.weights import make_checkpoint

    targets = [(b, None) for b in backends] + [(m.rsplit(".", 1)[-1], m) for m in modules or []]
    tmp = None if checkpoint else tempfile.mkdtemp(prefix="dsport-model-")
    try:
        if checkpoint:
            cfg = load_config(checkpoint)
            fp8_cache = cfg.sparse and (cfg.kv_lora_rank, cfg.qk_rope_head_dim) == (512, 64)
            n = prompt_len or (4 * cfg.index_topk if cfg.sparse else 64)
            cases = [(f"{Path(checkpoint).name}/prefill-{n}+decode-{DECODE_STEPS}", checkpoint, n,
                      {"kv_cache": "fp8"} if fp8_cache else {})]
        else:
            assert tmp is not None
            cases = [(f"{s.name}/prefill-{prompt_len or s.prompt_len}+decode-{DECODE_STEPS}",
                      str(make_checkpoint(Path(tmp) / s.name, tiny_config(**s.config), seed=1)), prompt_len or s.prompt_len, s.options)
                     for s in scenarios() if not only or s.name in only]
        rows = []
        for backend, module in targets:
            first: ResultRow | None = None
            for case, ckpt, prompt_len, options in cases:
                if first is not None and first.verdict == "skip":  # unavailable here: the same answer for every case
                    rows.append(replace(first, case=case))
                    continue
                rows.append(_run_one(backend, module, case, ckpt, prompt_len, options, timeout, _again(backend, module, checkpoint)))
                first = first or rows[-1]
        return rows
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _run_one(backend: str, module: str | None, case: str, ckpt: str, prompt_len: int, options: dict[str, str],
             timeout: float, again: list[str]) -> ResultRow:
    job = {"backend": backend, "backend_module": module, "checkpoint": ckpt, "prompt_len": prompt_len,
           "options": options, "case": case, "again": again}
    t0 = time.perf_counter()
    with Worker("dsport.conformance.model", job) as w:
        try:
            ev = w.next(timeout)
        except queue.Empty:
            return ResultRow.model(backend, case, "timeout", f"no result within {timeout:.0f} s", {}, timeout, again)
        if ev is None or ev.get("event") != "result":
            return ResultRow.model(backend, case, "crash", w.died(), {}, time.perf_counter() - t0, again)
        return ResultRow.from_json(ev["rows"][0])


def model_unchecked(rows: list[ResultRow], explicit: set[str], allow_skip: bool = False) -> list[str]:
    """What --model was asked to check and did not (see runner.unchecked for the op-level rule)."""
    out = []
    for r in rows:
        named = r.backend in explicit or r.metrics.get("module") in explicit
        if r.verdict == "skip" and named and not allow_skip:
            out.append(f"backend {r.backend} ({r.case}) was named explicitly but not checked: {r.reason} "
                       "(--allow-skip accepts that)")
    if rows and not any(r.verdict in EXECUTED for r in rows) and not out and not allow_skip:
        out.append(f"no model case was executed: {rows[0].reason}")
    if not rows:
        out.append("no backend was run")
    return out


def module_table(mod: BackendModule, label: str, dtype: Any) -> Any:
    """An OpTable of a backend module's ops (those its capabilities admit in
    ``dtype``), the rest served by the default fallback chain."""
    from ..core.registry import OpTable, resolve
    from ..core.spec import specs

    base = resolve({"backend": "torch", "fallback": "fallback", "dtype": str(dtype).removeprefix("torch.")})
    bound, served = dict(base.ops), dict(base.served_by)
    for op, impl in mod.ops.items():
        if mod.refusal(op, {"dtype": dtype}):
            continue
        bound[op], served[op] = specs()[op].checked(impl), label
    return OpTable(bound, served, base.trace)


def _main(job_path: str) -> int:
    """The subprocess side: one scenario on one backend, its row as one ``result`` event."""
    proto = protocol_stream()
    job = json.loads(Path(job_path).read_text())
    from .worker import load

    mod = load(job)
    apply_env(dict(mod.env), "dsport.conformance.model", [job_path], proto)
    emit(proto, event="result", rows=[_scenario_row(mod, job).to_json()])
    emit(proto, event="done")
    return 0


def _scenario_row(mod: BackendModule, job: dict[str, Any]) -> ResultRow:
    import torch

    from ..core.registry import resolve

    backend, case, again, module = job["backend"], job["case"], job["again"], job.get("backend_module")
    backend = mod.name if module else backend
    ok, reason, broken = mod.availability()
    if broken:  # a broken backend is a crash row, not a skip
        return ResultRow.model(backend, case, "crash", reason, {"module": module}, None, again)
    if not ok:
        return ResultRow.model(backend, case, "skip", f"backend unavailable: {reason}", {"module": module}, None, again)
    from ..core.errors import ValidationError
    from .model_compare import compare
    from ..core.model.config import load_config

    t0 = time.perf_counter()
    # the model runs in float32 here: ops whose declared capabilities exclude it fall back at resolve time
    ops = module_table(mod, backend, torch.float32) if module else resolve({"backend": backend, "fallback": "fallback",
                                                                              "dtype": "float32"})
    borrowed = sorted({b for op, b in ops.served_by.items() if b != backend})
    tokens = torch.randint(0, 2 ** 31 - 1, (1, job["prompt_len"]), generator=torch.Generator().manual_seed(0))
    tokens %= load_config(job["checkpoint"]).vocab_size
    try:
        rep = compare(job["checkpoint"], ops, tokens, decode_steps=DECODE_STEPS, **job["options"])
    except ValidationError as e:
        if e.arg != "(capability)":
            raise
        # a per-call limit (head count, topk multiple) that resolve-time filtering cannot see
        return ResultRow.model(backend, case, "unsupported", f"the model's shapes are outside a declared limit: {e}", {}, None,
                               again)
    f = rep.first_failure
    cos = rep.decode_cosine[0]
    metrics = {"logits_cosine_median": rep.logits_cosine_median, "logits_cosine_min": rep.logits_cosine_min,
               "top1_agreement": rep.top1_agreement, "ops_checked": rep.ops_checked, "precision": rep.precision,
               "fallback_from": borrowed, "served_by": ops.served_by, "decode_steps": DECODE_STEPS, "options": job["options"],
               "prompt_len": job["prompt_len"], "module": module,
               "decode_vs_reprefill_cos_median": cos.median().item(), "decode_vs_reprefill_cos_min": cos.min().item()}
    metrics["ops_used"], metrics["failed"] = rep.ops_used, rep.failed
    if f is not None:
        metrics["first_failure"] = {"phase": f.phase, "layer": f.layer, "op": f.op, "call": f.index, "metrics": f.metrics}
    why = (f"{f.phase}, layer {f.layer}, op {f.op} (call {f.index}): {f.reason}" if f is not None
           else f"every op call within tolerance; median logits cosine {rep.logits_cosine_median:.5f}")
    if len(rep.failed) > 1:
        why += f"; also out of tolerance: {', '.join(rep.failed[1:])}"
    from .tolerances import MODEL_MIN_DECODE_MEDIAN

    decode_ok = cos.median().item() >= MODEL_MIN_DECODE_MEDIAN
    why += f"; {DECODE_STEPS} decode steps vs re-prefill: median cosine {cos.median().item():.5f}"
    if borrowed:
        why += f"; ops without a {backend} kernel ran on {', '.join(borrowed)}"
    verdict = rep.verdict if decode_ok else "fail"
    return ResultRow.model(backend, case, verdict, why, metrics, time.perf_counter() - t0, again)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
