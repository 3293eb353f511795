"""Shared by the planted backends: call the float64 reference and hand back
outputs in the dtypes the spec declares, as a real backend must."""
from __future__ import annotations

from typing import Any, Callable

import torch

from dsport.core.spec import get_spec


def reference_op(op: str) -> Callable[..., Any]:
    from dsport.backends import reference

    fn = reference.OPS.get(op)
    if fn is None:
        raise NotImplementedError(f"the reference has no {op} yet")
    return fn


def as_spec(op: str, args: dict[str, Any], outs: Any) -> Any:
    spec = get_spec(op)
    bound = spec.bind(**args)
    declared = spec.outputs_for(bound)
    single = not isinstance(outs, (tuple, list))
    outs = (outs,) if single else tuple(outs)
    cast = tuple(x.to(o.dtype_for(bound)) if x.is_floating_point() else x
                 for o, x in zip(declared, outs))
    return cast[0] if single else cast


def via_reference(op: str, **args: Any) -> Any:
    return as_spec(op, args, reference_op(op)(**args))


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, shift: int = 0):
    """Dense causal MHA in float64, written here independently of the reference;
    ``shift`` moves the causal boundary (0 is correct)."""
    t, s = q.shape[0], k.shape[0]
    logits = torch.einsum("thd,shd->hts", q.double(), k.double()) * sm_scale
    pos = s - t + torch.arange(t)
    visible = torch.arange(s)[None, :] <= pos[:, None] + shift
    logits = logits.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(logits, -1)
    p = torch.exp(logits - lse[..., None]).nan_to_num(0.0)
    out = torch.einsum("hts,shd->thd", p, v.double())
    return out, lse.transpose(0, 1)
