"""Model conformance: the same checkpoint through a backend and through the
float64 reference, compared on logits and op by op, so a failure names the
first layer and op that leaves tolerance."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsport.core.model.trace import OpCall, RecordingOps
from dsport.core.model.transformer import Model
from dsport.core.registry import OpTable, resolve

# Per-call agreement bounds: activations of a float32/bf16 backend drift from
# the float64 oracle layer after layer, and FP8 re-quantization turns that
# drift into one-step differences in a few elements, so the bounds are loose
# per element but tight in aggregate (cosine).
MIN_COSINE = 0.995
MIN_RECALL = 0.9


@dataclass
class Divergence:
    layer: int
    op: str
    call: int
    output: int
    metric: str
    value: float
    bound: float


@dataclass
class ModelReport:
    backend: str
    tokens: list[int]
    logits_cosine: float
    top1_agreement: float
    ops_compared: int
    first_divergence: Divergence | None
    precision: str
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        self.verdict = "pass" if self.first_divergence is None and self.logits_cosine >= MIN_COSINE else "fail"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    finite = torch.isfinite(a) & torch.isfinite(b)
    if not bool((torch.isfinite(a) == torch.isfinite(b)).all()):
        return float("-inf")
    a, b = a[finite], b[finite]
    if a.numel() == 0 or (a.norm() == 0 and b.norm() == 0):
        return 1.0
    return float((a @ b) / (a.norm() * b.norm()).clamp_min(1e-300))


def _recall(ref: torch.Tensor, out: torch.Tensor) -> float:
    hits = total = 0
    for r, o in zip(ref.reshape(ref.shape[0], -1).tolist(), out.reshape(out.shape[0], -1).tolist()):
        want = {i for i in r if i >= 0}
        hits += len(want & set(o))
        total += len(want)
    return hits / total if total else 1.0


def _agree(ref: OpCall, out: OpCall) -> Divergence | None:
    for k, (r, o) in enumerate(zip(ref.outputs, out.outputs)):
        if r.shape != o.shape:
            return Divergence(ref.layer, ref.op, ref.index, k, "shape", float("nan"), float("nan"))
        if r.dtype in (torch.int32, torch.int64):
            value, bound, metric = _recall(r, o), MIN_RECALL, "recall"
        else:
            value, bound, metric = _cosine(r.float() if r.element_size() == 1 else r, o.float() if o.element_size() == 1 else o), MIN_COSINE, "cosine"
        if not value >= bound:
            return Divergence(ref.layer, ref.op, ref.index, k, metric, value, bound)
    return None


def _run(ckpt: Path, ops: OpTable, dtype: torch.dtype, tokens: torch.Tensor) -> tuple[torch.Tensor, list[OpCall]]:
    rec = RecordingOps(ops)
    model = Model.from_pretrained(ckpt, ops=rec, dtype=dtype)  # type: ignore[arg-type]
    rec.watch(model)
    rec.reset()
    return model(tokens), rec.calls


def compare(ckpt: str | Path, backend: str | OpTable, tokens: torch.Tensor, dtype: torch.dtype = torch.float32,
            reference: OpTable | None = None) -> ModelReport:
    """Run ``tokens`` [B, S] through ``backend`` and the reference; report logits
    agreement and the first (layer, op) whose outputs leave the bounds."""
    name = backend if isinstance(backend, str) else "custom"
    ops = resolve(backend) if isinstance(backend, str) else backend
    ref_logits, ref_calls = _run(Path(ckpt), reference or resolve("reference"), torch.float64, tokens)
    logits, calls = _run(Path(ckpt), ops, dtype, tokens)
    first = None
    for r, o in zip(ref_calls, calls):
        if (r.layer, r.op, r.index) != (o.layer, o.op, o.index):
            first = Divergence(r.layer, r.op, r.index, -1, "call order", float("nan"), float("nan"))
            break
        if (first := _agree(r, o)) is not None:
            break
    if first is None and len(ref_calls) != len(calls):
        first = Divergence(-1, "(graph)", 0, -1, "number of op calls", len(calls), len(ref_calls))
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    return ModelReport(name, tokens.flatten().tolist(), _cosine(ref_logits, logits), top1, min(len(ref_calls), len(calls)), first,
                       str(dtype).removeprefix("torch."))
