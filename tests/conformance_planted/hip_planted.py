"""test-only: the hip backend's aiter adapters with one AMD porting bug
planted, checked through ``contract_ops`` like the real adapters (arch
gfx942, where aiter computes in e4m3fnuz). ``DSPORT_HIP_PLANT`` picks the
bug; each must come out ``fail``:

* ``paged-layout``: dsport's indexer cache in DeepGEMM's per-block layout (a
  block's BS x 128 bytes, then its BS scales) handed to aiter's page-size-1
  cache as if every 132 bytes were one token's bytes + scale. At page size 1
  the two layouts coincide, so only BS > 1 shows it.
* ``fnuz-negzero``: e4m3fn operands re-labelled as e4m3fnuz (scale x2)
  without turning 0x80 (fn's -0) into 0x00: under fnuz 0x80 is NaN.
* ``fn-bytes-unmapped``: e4m3fn bytes forwarded to gfx942 as they are: aiter
  reads them as fnuz, every value halved.
* ``ep-nan-weights``: dsport's -1 expert ids handed to fused_moe through its
  expert_mask, but their weights (never to be read) left as they are: aiter
  multiplies the remote slot's zero row by the weight, and 0 * NaN is NaN.
"""
from __future__ import annotations

import os

import torch

from dsport.backends.hip import aiter as A
from dsport.backends.reference.indexer import index_cache_unpack
from dsport.core.fp8 import E4M3FNUZ, fp8_format

NAME = "hip_planted"
ARCH = "gfx942"


def available() -> tuple[bool, str]:
    return False, "aiter is not importable here"


OPS: dict = {}


def _relabel_keeping_negzero(x: torch.Tensor, target) -> tuple[torch.Tensor, float]:
    if x.dtype == target.dtype:
        return x.contiguous(), 1.0
    return x.contiguous().view(torch.uint8).view(E4M3FNUZ.dtype), 2.0  # BUG: 0x80 stays; NaN under fnuz


def _unmapped(x: torch.Tensor, target) -> tuple[torch.Tensor, float]:
    return x.contiguous(), 1.0  # BUG: the arch's kernels read these fn bytes as fnuz


def _paged_layout_bug(model: A.ContractModel):
    def indexer_logits_paged(q, k_cache, weights, block_table, seqlens):
        b, h, d = q.shape
        nb, bs = k_cache.shape[:2]
        mb = block_table.shape[1]
        k8, k_scale = index_cache_unpack(k_cache, fp8_format(q.dtype))
        k8a, fk = A.to_arch(k8, model.fp8)
        qa, fq = A.to_arch(q, model.fp8)
        blocks = torch.cat([k8a.reshape(nb, bs * d).view(torch.uint8),
                            (k_scale.float() * fk).contiguous().view(torch.uint8)], dim=1)
        rows = blocks.reshape(nb * bs, 1, 1, d + 4)  # BUG: per-block bytes read as per-token rows
        pos = torch.arange(mb * bs)
        table = block_table.long()
        slots = torch.where(table[:, pos // bs] >= 0, table[:, pos // bs] * bs + pos % bs, 0).int()
        out = torch.full((b, mb * bs), float("-inf"), dtype=torch.float32)
        if b:
            model.deepgemm_fp8_paged_mqa_logits(qa.reshape(b, 1, h, d), rows, (weights.float() * fq).contiguous(), out,
                                                seqlens.int().contiguous(), slots, mb * bs)
        return out
    return indexer_logits_paged


def contract_ops() -> dict:
    PLANT = os.environ.get("DSPORT_HIP_PLANT", "paged-layout")  # read per call: tests switch bugs in one process
    model = A.ContractModel(ARCH)
    if PLANT == "fnuz-negzero":
        return A.make_ops(model, ARCH, to_arch=_relabel_keeping_negzero)
    if PLANT == "fn-bytes-unmapped":
        return A.make_ops(model, ARCH, to_arch=_unmapped)
    if PLANT == "ep-nan-weights":
        return {**A.make_ops(model, ARCH), "moe_experts": _ep_weights_bug(model)}
    return {**A.make_ops(model, ARCH), "indexer_logits_paged": _paged_layout_bug(model)}


def _ep_weights_bug(model: A.ContractModel):
    def moe_experts(x, ids, weights, w1, w3, w2):
        e = w1.shape[0]
        gids = torch.where(ids < 0, torch.full_like(ids, e), ids).int()
        mask = torch.cat([torch.ones(e, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)])
        return model.fused_moe(x, torch.cat([w1, w3], dim=1), w2, weights.float(), gids, expert_mask=mask)  # BUG
    return moe_experts
