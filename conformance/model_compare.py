"""Model conformance: the same checkpoint through a backend and through the
float64 reference. Logits are compared end to end; every op call of the
backend run is judged against the reference op on the same arguments (see
:mod:`dsport.conformance.model_trace`), so a failure names the first layer and op
that leaves tolerance."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .model_trace import CheckedOps, OpCheck
from .tolerances import MODEL_MIN_MEDIAN_COSINE
from ..core.model.transformer import Model
from ..core.registry import OpTable, resolve



@dataclass
class ModelReport:
    backend: str
    tokens: list[int]
    precision: str
    logits_cosine_median: float   # per position, median over positions
    logits_cosine_min: float
    top1_agreement: float
    ops_checked: int
    first_failure: OpCheck | None
    verdict: str = field(init=False)
    decode_cosine: torch.Tensor | None = field(default=None, repr=False)  # [B, steps], decode vs re-prefill
    ops_used: list[str] = field(default_factory=list)                      # every op the run called, prefill and decode
    failed: list[str] = field(default_factory=list)                        # "phase: op" of every failing call, once each

    def __post_init__(self) -> None:
        self.verdict = "pass" if self.first_failure is None and self.logits_cosine_median >= MODEL_MIN_MEDIAN_COSINE else "fail"

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("decode_cosine", "first_failure")}
        out["first_failure"] = asdict(self.first_failure) if self.first_failure is not None else None
        out["decode_cosine"] = None if self.decode_cosine is None else self.decode_cosine.tolist()
        return out




def decode_consistency(model: Model, prompt: torch.Tensor, steps: int = 16, checked: CheckedOps | None = None) -> torch.Tensor:
    """Prefill ``prompt`` [B, S], then ``steps`` greedy decode steps through the
    caches, then re-prefill all the tokens from scratch; returns the cosine
    of each decode step's logits with the re-prefill's at the same position
    ([B, steps]). Both paths must agree: caches, positions and top-k
    selection in decode are the same computation as in prefill. With
    ``checked`` (the CheckedOps the model runs on) every op call of each decode
    step is judged too, tagged ``decode step i``."""
    bsz, n = prompt.shape
    model.reset(bsz, n + steps)
    tokens = prompt
    phase = (lambda p: setattr(checked, "phase", p)) if checked is not None else (lambda p: None)  # noqa: E731
    phase("prefill")
    nxt = model(prompt)[:, -1].argmax(-1, keepdim=True)
    stepwise = []
    for i in range(steps):
        tokens = torch.cat([tokens, nxt], dim=1)
        phase(f"decode step {i}")
        row = model(nxt, n + i)[:, -1]
        stepwise.append(row)
        nxt = row.argmax(-1, keepdim=True)
    phase("re-prefill")
    full = model(tokens)[:, n:]  # start_pos 0: everything recomputed, caches rebuilt
    phase("prefill")
    return torch.nn.functional.cosine_similarity(torch.stack(stepwise, 1).double(), full.double(), dim=-1)


def compare(ckpt: str | Path, backend: str | OpTable, tokens: torch.Tensor, dtype: torch.dtype = torch.float32,
            decode_steps: int = 0, **options: Any) -> ModelReport:
    """Run ``tokens`` [B, S] through ``backend`` (in ``dtype``) and through the
    float64 reference; judge logits and every op call. With ``decode_steps``,
    the backend model then decodes that many greedy steps through its caches,
    every op call judged, and ``decode_cosine`` holds each step's agreement
    with a re-prefill. ``options`` go to Model.from_pretrained (indexer=,
    kv_cache=, moe=)."""
    name = backend if isinstance(backend, str) else "custom"
    ops = resolve(backend) if isinstance(backend, str) else backend
    reference = resolve("reference")
    ref_logits = Model.from_pretrained(ckpt, ops=reference, dtype=torch.float64, **options)(tokens)
    checked = CheckedOps(ops, reference)
    model = Model.from_pretrained(ckpt, ops=checked, dtype=dtype, **options)  # type: ignore[arg-type]
    checked.watch(model)
    logits = model(tokens)
    decode = decode_consistency(model, tokens, decode_steps, checked) if decode_steps else None
    top1 = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    cos = torch.nn.functional.cosine_similarity(logits.double(), ref_logits.double(), dim=-1).flatten()
    rep = ModelReport(name, tokens.flatten().tolist(), str(dtype).removeprefix("torch."), cos.median().item(), cos.min().item(),
                      top1, len(checked.checks), checked.first_failure())
    rep.decode_cosine = decode
    rep.ops_used = sorted({c.op for c in checked.checks})
    rep.failed = list(dict.fromkeys(f"{c.phase.split(' step')[0]}: {c.op}" for c in checked.checks if not c.ok))
    rep.ops_checked = len(checked.checks)
    rep.first_failure = checked.first_failure()
    rep.__post_init__()  # the decode steps' op calls count too
    return rep
