"""Sparse MLA prefill/decode served by FlashMLA, with every convention mapped
to dsport's spec, and the contract models those mappings are checked against
where FlashMLA cannot run.

Sources (deepseek-ai/FlashMLA): ``flash_mla/flash_mla_interface.py``
(``flash_mla_sparse_fwd``, ``flash_mla_with_kvcache``: argument shapes, the
656-byte cache, output order); ``csrc/api/sparse_fwd.h`` and
``csrc/api/sparse_decode.h`` (h_q 64 or 128 only; bf16 q; ``kv.stride(1) ==
656`` "the whole block must be contiguous"; the page stride itself is free);
the reference implementations in ``tests/ref.py`` (release of 2026-01-16,
commit 082094b, and later) and ``tests/test_flash_mla_prefill.py`` /
``tests/test_flash_mla_decoding.py`` (release of 2025-09-29, commit c28eca9).

Conventions, per release:

========================  ==================  ==================  ========
                          2025-09 (c28eca9)   2026-01 (082094b)+  dsport
========================  ==================  ==================  ========
prefill lse / max_logits  base 2 (scores      natural log         natural
                          times log2 e)
prefill, empty row lse    -inf                +inf                -inf
decode lse                natural             natural             natural
decode, empty row lse     +inf                +inf                -inf
prefill output order      (out, max_logits, lse)                  (out, lse, max_logits)
heads                     64 or 128 (pad)     64 or 128 (pad)     any
========================  ==================  ==================  ========

FlashMLA's own test packer floors the *scale* at 1e-4 (``tests/quant.py``,
``_cast_scale_inv_to_ue8m0``), dsport floors the amax at 1e-4 before dividing
by fmax: for a tile whose amax is below 1e-4 * 448 the two packers write
different bytes. The decode kernel only multiplies the stored bytes by the
stored scales, so it reads either packer's rows correctly; the adapter never
packs, so dsport's packer rule is the one in force.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ...core.capabilities import Capability, Limit, declare

HEADS = (64, 128)
ROW = 656
DQK, DV = 576, 512
_BF16 = (torch.bfloat16,)
_HEAD_LIMIT = Limit("H", max=HEADS[-1], why="FlashMLA runs 64 or 128 query heads; fewer are padded, more would need a split")
_DIMS = (Limit("DQK", values=(DQK,), why="FlashMLA's sparse kernels: d_qk 576"),
         Limit("d_v", values=(DV,), why="FlashMLA's sparse kernels: d_v 512"))
#: the adapters' limits, the same over the library and over its contract model
PREFILL_CAPABILITY = Capability(dtypes=_BF16, arg_dtypes=(("q", _BF16), ("kv", _BF16)), limits=(_HEAD_LIMIT, *_DIMS),
                                note="FlashMLA flash_mla_sparse_fwd: bf16, d_qk 576, d_v 512, H <= 128 (padded to 64/128)")
DECODE_CAPABILITY = Capability(dtypes=_BF16, fp8_formats=("e4m3fn",), arg_dtypes=(("q", _BF16), ("kv_cache", (torch.uint8,))),
                               limits=(_HEAD_LIMIT, *_DIMS),
                               note="FlashMLA flash_mla_with_kvcache: bf16 q, the 656-byte e4m3fn cache only, H <= 128")


@dataclass(frozen=True)
class Conventions:
    release: str
    prefill_lse_base2: bool  # lse and max_logits of the prefill kernel are in log2 units
    prefill_empty_lse: float  # what the prefill kernel writes as lse for a row with no valid index
    decode_empty_lse: float


SEPT_2025 = Conventions("2025-09-29 (c28eca9)", True, -math.inf, math.inf)
JAN_2026 = Conventions("2026-01-16 (082094b) and later", False, math.inf, math.inf)
RELEASES = {c.release: c for c in (SEPT_2025, JAN_2026)}


def detect(lib: Any) -> Conventions:
    """The release an importable ``flash_mla`` is: the 2026-01 rewrite
    introduced ``FlashMLASchedMeta`` (get_mla_metadata returns one)."""
    iface = getattr(lib, "flash_mla_interface", lib)
    return JAN_2026 if hasattr(iface, "FlashMLASchedMeta") else SEPT_2025


def padded_heads(h: int) -> int:
    """FlashMLA runs 64 or 128 query heads; TP-sharded counts (8..32) are padded up."""
    for p in HEADS:
        if h <= p:
            return p
    raise NotImplementedError(f"more than {HEADS[-1]} query heads: split the call by heads")


def _pad_heads(q: torch.Tensor, dim: int) -> tuple[torch.Tensor, int]:
    h = q.shape[dim]
    hp = padded_heads(h)
    if hp == h:
        return q.contiguous(), h
    shape = list(q.shape)
    shape[dim] = hp - h
    return torch.cat([q, q.new_zeros(shape)], dim=dim).contiguous(), h  # zero heads: finite, sliced off after


def _bf16(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.bfloat16:
        raise NotImplementedError(f"{op}: FlashMLA takes bf16 {name}, got {t.dtype} (declared in CAPABILITIES)")


def _dims(op: str, dqk: int, d_v: int) -> None:
    if dqk != DQK or d_v != DV:
        raise NotImplementedError(f"{op}: FlashMLA's sparse kernels take d_qk {DQK}, d_v {DV}, got {dqk}, {d_v}")


def prefill_adapter(vendor: Callable[..., Any], conv: Conventions) -> Callable[..., Any]:
    """dsport's sparse_mla_prefill on top of ``flash_mla_sparse_fwd``."""

    @declare(PREFILL_CAPABILITY)
    def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
        _bf16("sparse_mla_prefill", "q", q)
        _bf16("sparse_mla_prefill", "kv", kv)
        _dims("sparse_mla_prefill", q.shape[-1], d_v)
        t, h, _ = q.shape
        if t == 0:  # nothing to attend: FlashMLA is not asked about empty batches
            return q.new_zeros((0, h, d_v)), q.new_zeros((0, h), dtype=torch.float32), q.new_zeros((0, h), dtype=torch.float32)
        qp, h = _pad_heads(q, 1)
        out, max_logits, lse = vendor(qp, kv.contiguous(), indices.int().contiguous(), sm_scale, d_v)  # vendor order
        out, max_logits, lse = out[:, :h], max_logits[:, :h].float(), lse[:, :h].float()
        empty = lse == conv.prefill_empty_lse
        if conv.prefill_lse_base2:
            lse, max_logits = lse * math.log(2.0), max_logits * math.log(2.0)
        lse = torch.where(empty, -math.inf, lse)
        max_logits = torch.where(empty, -math.inf, max_logits)
        out = torch.where(empty.unsqueeze(-1), torch.zeros((), dtype=out.dtype, device=out.device), out)
        return out.to(q.dtype), lse, max_logits  # dsport order

    return sparse_mla_prefill


def decode_adapter(vendor: Callable[..., Any], conv: Conventions,
                   metadata: Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any, Any]] | None = None) -> Callable[..., Any]:
    """dsport's sparse_mla_decode on top of ``flash_mla_with_kvcache`` (sparse,
    FP8 cache). ``metadata(q, indices) -> (tile_scheduler_metadata, num_splits,
    cache_seqlens)`` is the release's scheduler call (see :func:`vendor_ops`)."""

    @declare(DECODE_CAPABILITY)
    def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
        _bf16("sparse_mla_decode", "q", q)
        if kv_cache.dtype != torch.uint8 or kv_cache.shape[-1] != ROW:
            raise NotImplementedError("sparse_mla_decode: FlashMLA's sparse decode reads only the 656-byte FP8 cache")
        if str(fmt) != "e4m3fn":
            raise NotImplementedError(f"sparse_mla_decode: FlashMLA reads e4m3fn bytes, got fmt={fmt}")
        b, s_q, h, _ = q.shape
        if b == 0 or s_q == 0:  # sparse_decode.h: TORCH_CHECK(b > 0), TORCH_CHECK(s_q > 0)
            return q.new_zeros((b, s_q, h, d_v)), q.new_zeros((b, h, s_q), dtype=torch.float32)
        cache = kv_cache
        if cache.stride(-1) != 1 or cache.stride(1) != ROW * cache.shape[2]:
            cache = cache.contiguous()  # each page must be contiguous; the stride between pages may be anything
        qp, h = _pad_heads(q, 2)
        idx = indices.int().contiguous()
        sched, splits, seqlens = metadata(qp, idx) if metadata is not None else (None, None, None)
        out, lse = vendor(qp, cache.view(torch.float8_e4m3fn), None, seqlens, d_v, sched, splits, softmax_scale=sm_scale,
                          causal=False, is_fp8_kvcache=True, indices=idx)
        out, lse = out[:, :, :h], lse[:, :h].float()
        empty = lse == conv.decode_empty_lse
        lse = torch.where(empty, -math.inf, lse)
        out = torch.where(empty.transpose(1, 2).unsqueeze(-1), torch.zeros((), dtype=out.dtype, device=out.device), out)
        return out.to(q.dtype), lse

    return sparse_mla_decode


# -- where FlashMLA comes from -------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    """One packaging of FlashMLA's Python interface: the module to import, the name of its sparse
    prefill function, and how to tell whether its compiled kernels actually loaded (an import that
    succeeds is not enough for the serving engines' copies)."""

    module: str
    prefill: str
    loaded: Callable[[Any], tuple[bool, str]]
    source: str


def _always(lib: Any) -> tuple[bool, str]:
    return True, ""


def _sgl_loaded(lib: Any) -> tuple[bool, str]:
    # the module catches a failed `from sgl_kernel import flashmla_ops` and keeps the exception
    err = getattr(lib, "_flashmla_import_error", None)
    return err is None, f"sgl_kernel.flashmla_ops did not load ({err})"


def _vllm_loaded(probe: str) -> Callable[[Any], tuple[bool, str]]:
    def loaded(lib: Any) -> tuple[bool, str]:
        ok, why = getattr(lib, probe)()  # vLLM's own (supported, reason) probe
        return bool(ok), str(why or "")
    return loaded


#: searched in this order. Facts per source: the standalone package (deepseek-ai/FlashMLA
#: flash_mla/flash_mla_interface.py); sgl-kernel wheels (sgl-project/sglang
#: sgl-kernel/python/sgl_kernel/flash_mla.py: the same interface over torch.ops.sgl_kernel, 2025-09
#: signatures with descale_q/descale_k inserted before is_fp8_kvcache/indices, later versions the
#: 2026-01 one with FlashMLASchedMeta; a failed extension load is kept, not raised); vLLM since its
#: v1 attention ops (vllm-project/vllm vllm/v1/attention/ops/flashmla.py: re-exports the 2026-01
#: interface vendored as vllm.third_party.flashmla, or stand-ins that raise when vllm._flashmla_C is
#: missing, hence the probe); older vLLM (vllm/attention/ops/flashmla.py: the 2025-09 interface over
#: torch.ops._flashmla_C, the sparse prefill named flash_mla_sparse_prefill, lse base 2).
DISTRIBUTIONS = (
    Distribution("flash_mla", "flash_mla_sparse_fwd", _always, "deepseek-ai/FlashMLA"),
    Distribution("sgl_kernel.flash_mla", "flash_mla_sparse_fwd", _sgl_loaded, "sgl-kernel"),
    Distribution("vllm.v1.attention.ops.flashmla", "flash_mla_sparse_fwd", _vllm_loaded("is_flashmla_sparse_supported"), "vLLM"),
    Distribution("vllm.attention.ops.flashmla", "flash_mla_sparse_prefill", _vllm_loaded("is_flashmla_supported"), "vLLM (legacy)"),
)


def find(import_module: Callable[[str], Any] = importlib.import_module) -> tuple[Any | None, Distribution | None, str]:
    """The first distribution whose kernels load here: (module, distribution, ""), or
    (None, None, why each one does not)."""
    why = []
    for d in DISTRIBUTIONS:
        try:
            lib = import_module(d.module)
            ok, reason = d.loaded(lib)
        except Exception as e:  # noqa: BLE001 - a copy failing to import (CPU torch, no GPU) is a reason
            ok, reason = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if ok:
            return lib, d, ""
        why.append(f"{d.module}: {reason}")
    return None, None, "; ".join(why)


def vendor_ops(lib: Any, dist: Distribution = DISTRIBUTIONS[0]) -> dict[str, Callable[..., Any]]:
    """The adapters over an importable FlashMLA interface ``lib`` packaged as ``dist``."""
    conv = detect(lib)
    if conv is JAN_2026:
        def metadata(q, idx):  # an empty FlashMLASchedMeta, filled on first use
            return lib.get_mla_metadata()[0], None, None
    else:
        def metadata(q, idx):  # 2025-09: scheduled from per-sequence lengths; sparse mode schedules topk tokens
            b, s_q, h_q, _ = q.shape
            seqlens = torch.full((b,), idx.shape[-1], dtype=torch.int32, device=q.device)
            sched, splits = lib.get_mla_metadata(seqlens, s_q * h_q, 1, h_q, True, idx.shape[-1])
            return sched, splits, seqlens
    # flash_mla_with_kvcache: the copies agree on the first seven positional arguments; everything
    # after them (descale_q/descale_k in sgl-kernel and vLLM, attn_sink in 2026-01) goes by keyword
    return {"sparse_mla_prefill": prefill_adapter(getattr(lib, dist.prefill), conv),
            "sparse_mla_decode": decode_adapter(lib.flash_mla_with_kvcache, conv, metadata)}


def contract_ops(conv: Conventions = JAN_2026) -> dict[str, Callable[..., Any]]:
    """The adapters with FlashMLA replaced by its contract models for ``conv``'s release."""
    return {"sparse_mla_prefill": prefill_adapter(sparse_fwd_model(conv), conv),
            "sparse_mla_decode": decode_adapter(with_kvcache_model(conv), conv)}


# -- contract models: FlashMLA's documented behaviour, in torch ----------------
def _attend(q: torch.Tensor, rows: torch.Tensor, invalid: torch.Tensor, sm_scale: float, d_v: int):
    """q [N, H, D] fp32, gathered rows [N, k, D] fp32 with invalid rows already
    zeroed (FlashMLA never reads them: its tests fill unused slots with NaN),
    invalid [N, k] -> (out fp32 [N, H, d_v], natural lse [N, H], max logit [N, H])."""
    p = torch.einsum("nhd,nkd->nhk", q, rows) * sm_scale
    p = p.masked_fill(invalid.unsqueeze(1), -math.inf)
    lse = torch.logsumexp(p, dim=-1)
    mx = p.max(dim=-1).values if p.shape[-1] else torch.full(lse.shape, -math.inf)
    safe = torch.where(torch.isinf(lse) & (lse < 0), math.inf, lse)  # exp(p - inf) = 0 for an empty row (tests/ref.py)
    out = torch.einsum("nhk,nkd->nhd", torch.exp(p - safe.unsqueeze(-1)), rows[..., :d_v])
    return out, lse, mx


def sparse_fwd_model(conv: Conventions) -> Callable[..., Any]:
    """``flash_mla_sparse_fwd`` as documented for ``conv``'s release."""

    def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512):
        assert q.dtype == torch.bfloat16 and kv.dtype == torch.bfloat16, "sparse_fwd.h: q and kv must be bf16"
        assert q.dim() == 3 and q.shape[1] in HEADS, f"sparse_fwd.h: Unsupported h_q: {q.shape[1]}"
        assert kv.dim() == 3 and kv.shape[1] == 1 and indices.dtype == torch.int32 and d_v == 512
        s_kv = kv.shape[0]
        idx = indices[:, 0]
        invalid = (idx < 0) | (idx >= s_kv)
        rows = kv[:, 0].float()[idx.clamp(0, max(s_kv - 1, 0)).long()] if s_kv else kv.new_zeros((*idx.shape, kv.shape[-1])).float()
        rows = rows.masked_fill(invalid.unsqueeze(-1), 0.0)
        out, lse, mx = _attend(q.float(), rows, invalid, sm_scale, d_v)
        empty = torch.isinf(lse) & (lse < 0)
        if conv.prefill_lse_base2:
            lse, mx = lse / math.log(2.0), mx / math.log(2.0)
        lse = torch.where(empty, conv.prefill_empty_lse, lse)
        return out.to(torch.bfloat16), mx, lse  # FlashMLA's order

    return flash_mla_sparse_fwd


def with_kvcache_model(conv: Conventions) -> Callable[..., Any]:
    """``flash_mla_with_kvcache`` in sparse FP8 mode, as documented for ``conv``'s release."""

    def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                               softmax_scale=None, causal=False, is_fp8_kvcache=False, indices=None):
        assert indices is not None and not causal and is_fp8_kvcache, "sparse decode: indices given, causal False, FP8 cache"
        assert q.dtype == torch.bfloat16 and q.shape[2] in HEADS, f"sparse_decode.h: Unsupported h_q: {q.shape[2]}"
        assert q.shape[0] > 0 and q.shape[1] > 0, "sparse_decode.h: TORCH_CHECK(b > 0), TORCH_CHECK(s_q > 0)"
        assert k_cache.shape[-1] == ROW and k_cache.shape[2] == 1, "sparse_decode.h: [num_blocks, page_block_size, 1, 656]"
        assert k_cache.stride(1) == ROW, "sparse_decode.h: The whole block must be contiguous when is_fp8_cache is True"
        b, s_q, h, d = q.shape
        nb, bs = k_cache.shape[:2]
        raw = k_cache.view(torch.uint8)
        flat_idx = indices.reshape(b * s_q, -1)
        invalid = flat_idx == -1
        safe = flat_idx.clamp_min(0).long()
        rows_u8 = raw[safe // bs, safe % bs, 0]  # page stride honoured: indexing goes through the strides
        lat = rows_u8[..., :512].contiguous().view(torch.float8_e4m3fn).float().unflatten(-1, (4, 128))
        scales = rows_u8[..., 512:528].contiguous().view(torch.float32)
        rope = rows_u8[..., 528:].contiguous().view(torch.bfloat16).float()
        rows = torch.cat([(lat * scales.unsqueeze(-1)).flatten(-2), rope], dim=-1)
        rows = rows.masked_fill(invalid.unsqueeze(-1), 0.0)
        scale = softmax_scale if softmax_scale is not None else d ** -0.5
        out, lse, _ = _attend(q.reshape(b * s_q, h, d).float(), rows, invalid, scale, head_dim_v)
        lse = torch.where(torch.isinf(lse) & (lse < 0), conv.decode_empty_lse, lse)
        return out.reshape(b, s_q, h, head_dim_v).to(torch.bfloat16), lse.reshape(b, s_q, h).transpose(1, 2)

    return flash_mla_with_kvcache


def flashmla_packer_model(kv: torch.Tensor) -> torch.Tensor:
    """FlashMLA's test packer (``tests/quant.py`` ``quantize_k_cache``): the
    ue8m0 scale is ``2^ceil(log2(max(amax / 448, 1e-4)))`` — the floor on the
    scale, not on the amax. [N, 576] -> [N, 656] bytes. Used only to show
    where the two packers part; the adapter never packs."""
    x = kv.float()
    out = torch.empty((x.shape[0], ROW), dtype=torch.uint8)
    s = torch.pow(2, torch.clamp_min(x[:, :512].unflatten(-1, (4, 128)).abs().amax(-1) / 448.0, 1e-4).log2().ceil())
    out[:, :512] = (x[:, :512].unflatten(-1, (4, 128)) / s.unsqueeze(-1)).flatten(-2).to(torch.float8_e4m3fn).view(torch.uint8)
    out[:, 512:528] = s.float().contiguous().view(torch.uint8)
    out[:, 528:] = x[:, 512:].to(torch.bfloat16).contiguous().view(torch.uint8)
    return out
