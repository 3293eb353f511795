"""Model-level planted bugs: the torch backend with one op broken in a way
that the op-level quick set would also see, but that a model run only sees
when it really exercises that path. ``dsport conformance --model`` must name
each of them (phase, layer, op):

* ``decode_cache``: sparse_mla_decode on the 656-byte FP8 latent cache reads
  all four 128-value tiles with the FIRST tile's scale. Only the FP8-cache
  decode path runs it; a float cache or prefill never does.
* ``topk_select``: keeps the k most recent keys of each row's window instead
  of the k highest-scoring ones. Invisible while a row has at most k valid
  keys (selection is then everything), so only a prompt well beyond
  index_topk shows it.

``DSPORT_PLANTED_MODEL_BUGS`` (comma separated, default both) picks which
bugs are on, so each can be shown caught on its own.
"""
from __future__ import annotations

import os

import torch

from dsport.backends import torch as base

NAME = "planted_model"
DESCRIPTION = "test-only: torch with an FP8 decode-cache bug and a top-k bug"
BUGS = set(filter(None, os.environ.get("DSPORT_PLANTED_MODEL_BUGS", "decode_cache,topk_select").split(",")))
CAPABILITIES = dict(base.CAPABILITIES)
LATENT, SCALES = 512, 16  # the 656-byte row: 512 fp8 latent bytes, then four fp32 tile scales, then 64 bf16 rope values


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
    if "decode_cache" in BUGS and kv_cache.dtype == torch.uint8:
        kv_cache = kv_cache.clone()
        first = kv_cache[..., LATENT:LATENT + 4]
        kv_cache[..., LATENT + 4:LATENT + SCALES] = first.repeat(*([1] * (first.dim() - 1)), 3)  # bug: tile 0's scale for all
    return base.OPS["sparse_mla_decode"](q, kv_cache, indices, sm_scale, d_v, fmt)


def topk_select(logits, k, ks=None, ke=None):
    if "topk_select" not in BUGS or ks is None:
        return base.OPS["topk_select"](logits, k, ks, ke)
    t = logits.shape[0]
    out = torch.full((t, k), -1, dtype=torch.int32, device=logits.device)
    for i in range(t):  # bug: the most recent k keys of the window, whatever their scores
        lo, hi = int(ks[i]), int(ke[i])
        recent = torch.arange(max(lo, hi - k), hi, dtype=torch.int32, device=logits.device)
        out[i, : recent.numel()] = recent
    return out


OPS = {**base.OPS, "sparse_mla_decode": sparse_mla_decode, "topk_select": topk_select}


def available() -> tuple[bool, str]:
    return base.available()
