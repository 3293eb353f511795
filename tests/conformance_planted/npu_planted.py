"""test-only: the npu backend's adapters with one NPU-specific porting slip
planted in the layout translation, chosen by ``DSPORT_NPU_PLANT``:

* ``valid_first``: indices handed over in dsport's order (-1 anywhere). The
  kernel ends a row at its first -1, so the valid entries after it are lost.
* ``lse_log2``: lse from softmax_max / softmax_sum with log2 instead of ln.
* ``rope_swap``: the two 32-halves of the rope part swapped when the
  656-byte cache is split into the bf16 nope / rope caches.

Unset, the adapters are the backend's own and must come out ``contract``;
each plant must come out ``fail``. Never available (no NPU): only
``contract_ops`` runs.
"""
from __future__ import annotations

import os
import types

import torch

from dsport.npu_kernels import adapters, contract_models, layouts

NAME = "npu_planted"
PLANT = os.environ.get("DSPORT_NPU_PLANT", "")


def _in_place(indices, limit=None):
    ok = indices >= 0 if limit is None else (indices >= 0) & (indices < limit)
    return torch.where(ok, indices, layouts.SENTINEL).int(), ok.sum(-1).int()


def _log2_lse(softmax_max, softmax_sum):
    lse = softmax_max.float() + torch.log2(softmax_sum.float())
    lse = torch.where(softmax_sum > 0, lse, torch.full_like(lse, float("-inf")))
    return lse.permute(1, 0, 2).reshape(lse.shape[1], -1)


def _swapped_rope(cache, fmt="e4m3fn"):
    nope, rope = layouts.split_mla_cache(cache, fmt)
    return nope, torch.cat([rope[..., 32:], rope[..., :32]], dim=-1)


_PLANTS = {"valid_first": ("valid_first", _in_place), "lse_log2": ("stats_to_lse", _log2_lse),
           "rope_swap": ("split_mla_cache", _swapped_rope)}


def _layouts():
    ns = types.SimpleNamespace(**{k: getattr(layouts, k) for k in dir(layouts) if not k.startswith("__")})
    if PLANT:
        name, fn = _PLANTS[PLANT]
        setattr(ns, name, fn)
    return ns


def available() -> tuple[bool, str]:
    return False, "no NPU: planted adapters run against contract models only"


OPS = adapters.make_ops(None)


def contract_ops() -> dict:
    return adapters.make_ops(contract_models, _layouts())
