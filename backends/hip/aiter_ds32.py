"""dsport's sparse decode over aiter's gfx950-only DeepSeek-V3.2 MLA decode (``mla_decode_fwd_ds32``),
and its contract model.

What aiter documents (ROCm/aiter ``aiter/mla.py`` ``mla_decode_fwd_ds32``, its stage-1 binding
``csrc/kernels/mla/ds32_decode_fwd.cu`` and the traits ``dsa_v32_16mx8_32nx1_fp8_traits``):

* gfx950 only (``assert get_gfx() == "gfx950"``; the binding checks it again); page size 1 only.
* q and KV arrive split: NoPE ``[*, 512]`` in ``aiter.dtypes.fp8`` (OCP e4m3fn on gfx950) with
  per-32-element E8M0 scales ``[*, 16]`` (``D_SCALE_SIZE = D_NOPE_SIZE / 32``), RoPE ``[*, 64]`` bf16
  never quantized; V is the NoPE part. The scales must be uint8 exponent bytes: the kernel reads
  one as ``bit_cast<float>(e8m0 << 23)`` (so byte 0 reads 0.0, not 2^-127), fp32 factors are refused.
* It runs on aiter's persistent schedule: ``get_mla_metadata_info_v1`` gives the buffer shapes
  in the order (work_metadata_ptrs, work_indptr, work_info_set, reduce_indptr, reduce_final_map,
  reduce_partial_map), ``get_mla_metadata_v1`` takes them as (work_metadata_ptrs, work_info_set,
  work_indptr, ...): the 2nd and 3rd swap. ``get_mla_metadata_info_v1`` asserts heads % 8 == 0.
* o ``[S, H, 512]`` bf16 and, with ``return_lse``, lse ``[S, H]`` fp32 (the natural-log merge of
  ``mla_reduce_v1``, as in the non-ds32 path's stage 2).

The mapping from dsport's contract: the 656-byte cache's four per-128 ue8m0 fp32 scales become
sixteen E8M0 bytes (each repeated over its four 32-blocks; exact, they are powers of two), its
e4m3fn latent bytes pass as they are (gfx950's own format; fnuz caches are refused: fnuz's +-240
codes are fn NaNs, so no relabelling is exact), and q's NoPE part is quantized the way dsport
quantizes activations, ``act_quant(q_nope, 32, e4m3fn, ue8m0)`` — the one lossy step, which a
bf16-q conformance row does not budget for. That is why this adapter is an opt-in variant
(:func:`make_ds32_ops`) and not in the op table: tests/test_hip_backend.py checks it against the
reference fed the q the kernel sees (status ``contract``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..reference.mla_cache import LATENT, ROPE, TILE, split_cache
from .aiter import NEG_INF, ContractModel, as_arch_bytes
from ...core.capabilities import Capability, Limit
from ...core.errors import ConfigError, ValidationError
from ...core.fp8 import E4M3FN, UE8M0, format_for_arch, quantize_groups

MX_BLOCK = 32                    # one E8M0 scale per 32 NoPE elements (the f8f6f4 MFMA's block)
SCALES = LATENT // MX_BLOCK      # 16
ARCH = "gfx950"

CAPABILITY = Capability(
    dtypes=(torch.bfloat16,), fp8_formats=(E4M3FN.name,), heads=(16, 32, 64, 128), archs=(ARCH,),
    limits=(Limit("W", values=(656,)), Limit("DQK", values=(576,)), Limit("d_v", values=(512,))),
    note="aiter mla_decode_fwd_ds32 (gfx950): the 656-byte e4m3fn cache only, q quantized per 32 with E8M0 "
         "scales; heads a multiple of 16 (the kernel's 16-row Q tile; metadata asserts % 8)")


def e8m0_bytes(scale: torch.Tensor, what: str) -> torch.Tensor:
    """Power-of-two fp32 scales -> their E8M0 exponent bytes (2^(b - 127)); anything else is refused."""
    s = scale.float().contiguous()
    bits = s.view(torch.int32)
    exact = (bits > 0) & ((bits & 0x7FFFFF) == 0) & (((bits >> 23) & 0xFF) < 255)  # positive, normal, no mantissa
    if not bool(exact.all()):
        bad = s[~exact][0].item()
        raise ValidationError("sparse_mla_decode", what, "ue8m0 scales (positive powers of two, as mla_cache_pack writes)",
                              f"a scale of {bad}")
    return ((bits >> 23) & 0xFF).to(torch.uint8)


def e8m0_value(b: torch.Tensor) -> torch.Tensor:
    """How the ds32 kernel reads an E8M0 byte: ``bit_cast<float>(b << 23)`` (0 -> 0.0, 255 -> inf)."""
    return (b.to(torch.int32) << 23).view(torch.float32)


class Ds32ContractModel(ContractModel):
    """The aiter contract models plus the ds32 decode and the metadata calls it needs."""

    def get_mla_metadata_info_v1(self, batch_size: int, max_seqlen_qo: int, num_head_qo: int, q_dtype: torch.dtype,
                                 kv_dtype: torch.dtype, is_sparse: bool, fast_mode: bool = True, **rest: Any
                                 ) -> tuple[tuple[Any, torch.dtype], ...]:
        """aiter/ops/attention.py: asserts heads % 8 == 0; returns (shape, dtype) of the six schedule
        buffers. The shapes here are a minimal schedule (one work item per batch entry): the decode
        model reads none of the schedule's contents, only that the buffers arrive in the right slots."""
        assert num_head_qo % 8 == 0
        tiles = batch_size * max(1, -(-num_head_qo * max_seqlen_qo // 128))
        return (((2,), torch.uint64), ((2,), torch.int32), ((tiles, 8), torch.int32), ((tiles + 1,), torch.int32),
                ((tiles, 2), torch.int32), ((tiles,), torch.int32))

    def get_mla_metadata_v1(self, seqlens_qo_indptr: torch.Tensor, seqlens_kv_indptr: torch.Tensor,
                            kv_last_page_lens: torch.Tensor, num_heads_per_head_k: int, num_heads_k: int,
                            is_causal: bool, work_metadata_ptrs: torch.Tensor, work_info_set: torch.Tensor,
                            work_indptr: torch.Tensor, reduce_indptr: torch.Tensor, reduce_final_map: torch.Tensor,
                            reduce_partial_map: torch.Tensor, page_size: int = 1, **rest: Any) -> None:
        """aiter/ops/attention.py ``get_mla_metadata_v1``: the buffers in this order, work_info_set
        [#work, 8] int32 (8 DWs per work item), work_indptr [#cu_part + 1]; filled in place."""
        assert work_metadata_ptrs.dtype == torch.uint64 and work_metadata_ptrs.shape == (2,), "work_metadata_ptrs"
        assert work_info_set.dim() == 2 and work_info_set.shape[1] == 8, "work_info_set must be [#work, 8]"
        assert work_indptr.dim() == 1 and reduce_final_map.dim() == 2 and reduce_final_map.shape[1] == 2, "buffers"
        assert seqlens_qo_indptr.dtype == torch.int32 and seqlens_kv_indptr.dtype == torch.int32, "indptrs int32"
        for t in (work_metadata_ptrs, work_info_set, work_indptr, reduce_indptr, reduce_final_map, reduce_partial_map):
            t.zero_()

    def mla_decode_fwd_ds32(self, q_nope_buffer: torch.Tensor, q_rope_buffer: torch.Tensor, kv_nope_buffer: torch.Tensor,
                            kv_rope_buffer: torch.Tensor, o: torch.Tensor | None, qo_indptr: torch.Tensor,
                            kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_last_page_lens: torch.Tensor,
                            max_seqlen_q: int, page_size: int = 1, nhead_kv: int = 1, sm_scale: float | None = None,
                            num_kv_splits: Any = None, work_meta_data: Any = None, work_indptr: Any = None,
                            work_info_set: Any = None, reduce_indptr: Any = None, reduce_final_map: Any = None,
                            reduce_partial_map: Any = None, intra_batch_mode: bool = False,
                            q_scale: torch.Tensor | None = None, kv_scale: torch.Tensor | None = None,
                            return_lse: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """aiter/mla.py ``mla_decode_fwd_ds32`` with the binding's checks (csrc/kernels/mla/ds32_decode_fwd.cu);
        fp32 arithmetic. Batch b's keys are tokens kv_indices[kv_indptr[b]:kv_indptr[b+1]] (page size 1)."""
        assert self.arch == ARCH, "mla_decode_fwd_ds32 is only supported on gfx950"
        assert page_size == 1, f"only page_size==1 supported, got {page_size}"
        assert q_scale is not None and q_scale.dtype == torch.uint8, "q_scale must be E8M0 uint8"
        assert kv_scale is not None and kv_scale.dtype == torch.uint8, "kv_scale must be E8M0 uint8"
        assert kv_scale.shape[-1] == SCALES, f"kv_scale last dim (scale_dim) must be {SCALES}"
        assert q_rope_buffer.dtype == torch.bfloat16 and kv_rope_buffer.dtype == torch.bfloat16, "ropes must be bf16"
        assert reduce_partial_map is not None and work_indptr is not None, "the persistent schedule is required"
        s, h, d_nope = q_nope_buffer.shape
        q = as_arch_bytes(q_nope_buffer, self.fp8).float() * e8m0_value(q_scale).repeat_interleave(MX_BLOCK, -1)
        kv = as_arch_bytes(kv_nope_buffer, self.fp8).float() * e8m0_value(kv_scale).repeat_interleave(MX_BLOCK, -1)
        qf, kf = torch.cat([q, q_rope_buffer.float()], -1), torch.cat([kv, kv_rope_buffer.float()], -1)
        scale = sm_scale if sm_scale is not None else (d_nope + q_rope_buffer.shape[-1]) ** -0.5
        o = torch.empty(s, h, d_nope, dtype=torch.bfloat16) if o is None else o
        lse = torch.empty(s, h, dtype=torch.float32)
        for b in range(qo_indptr.numel() - 1):
            idx = kv_indices[int(kv_indptr[b]): int(kv_indptr[b + 1])].long()
            for r in range(int(qo_indptr[b]), int(qo_indptr[b + 1])):
                logits = (qf[r] @ kf[idx].T) * scale  # [H, n]
                m = logits.amax(-1, keepdim=True)
                p = torch.exp(logits - m)
                l = p.sum(-1, keepdim=True)
                o[r] = ((p @ kv[idx]) / l).to(o.dtype)
                lse[r] = (m + torch.log(l)).squeeze(-1)
        return o, lse if return_lse else None


def make_ds32_ops(vendor: Any, target: str, q_format: Any = None, scale_order: Callable[[torch.Tensor], torch.Tensor] | None = None
                  ) -> dict[str, Callable[..., Any]]:
    """``sparse_mla_decode`` over ``vendor.mla_decode_fwd_ds32`` (``aiter.mla`` or :class:`Ds32ContractModel`).
    ``q_format`` and ``scale_order`` are the q quantization format and the per-128 -> per-32 scale
    expansion, parameters so that tests can plant wrong ones."""
    if target != ARCH:
        raise ConfigError(f"sparse_mla_decode via aiter mla_decode_fwd_ds32: gfx950 only (aiter asserts get_gfx() == "
                          f"'gfx950'), not {target}; {target} uses mla_decode_fwd over dequantized bf16 rows")
    fp8 = format_for_arch(target)
    qfmt = fp8 if q_format is None else q_format
    expand = scale_order or (lambda s: s.repeat_interleave(TILE // MX_BLOCK, -1))  # tile j covers 32-blocks 4j..4j+3

    def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
        b, sq, h, dqk = q.shape
        if kv_cache.dtype != torch.uint8 or dqk != LATENT + ROPE or d_v != LATENT or fmt != fp8.name:
            raise NotImplementedError(f"sparse_mla_decode (aiter ds32): takes the 656-byte {fp8} cache, d_qk 576, "
                                      f"d_v 512; got {kv_cache.dtype} [.., {kv_cache.shape[-1]}] {fmt}, d_qk {dqk}, d_v {d_v}")
        flat = kv_cache.reshape(-1, kv_cache.shape[-1])
        idx = indices.reshape(b * sq, indices.shape[-1]).long()
        valid = (idx >= 0) & (idx < flat.shape[0])
        dev = q.device
        out = torch.zeros(b * sq, h, d_v, dtype=q.dtype, device=dev)
        lse = torch.full((b * sq, h), NEG_INF, dtype=torch.float32, device=dev)
        counts = valid.sum(1)
        live = (counts > 0).nonzero().flatten()  # queries with no valid index: out 0, lse -inf, no vendor call
        if live.numel():
            # SPEC §10: only the rows the indices name are read; gathered in query order, so query i's
            # tokens are rows kv_indptr[i] .. kv_indptr[i+1] of the gathered buffers (page size 1)
            lat, scales, rope = split_cache(flat[idx[valid]], fmt, "sparse_mla_decode")
            kv_scale = e8m0_bytes(expand(scales), "kv_cache")
            qq = q.reshape(b * sq, h, dqk)[live]
            q8, qs = quantize_groups(qq[..., :LATENT], MX_BLOCK, qfmt, UE8M0)
            n = live.numel()
            qo_indptr = torch.arange(n + 1, dtype=torch.int32, device=dev)
            kv_indptr = torch.cat([torch.zeros(1, dtype=torch.int32, device=dev), counts[live].cumsum(0).int()])
            kv_indices = torch.arange(int(kv_indptr[-1]), dtype=torch.int32, device=dev)
            last = torch.ones(n, dtype=torch.int32, device=dev)
            info = vendor.get_mla_metadata_info_v1(n, 1, h, fp8.dtype, fp8.dtype, False, fast_mode=True)
            meta, indptr, work_info, r_indptr, r_final, r_partial = (torch.empty(shape, dtype=dt, device=dev)
                                                                     for shape, dt in info)
            vendor.get_mla_metadata_v1(qo_indptr, kv_indptr, last, h, 1, False, meta, work_info, indptr, r_indptr,
                                       r_final, r_partial, page_size=1, kv_granularity=16, max_seqlen_qo=1,
                                       uni_seqlen_qo=1, fast_mode=True, dtype_q_nope=fp8.dtype,
                                       dtype_q_rope=torch.bfloat16, dtype_kv_nope=fp8.dtype, dtype_kv_rope=torch.bfloat16)
            o = torch.empty(n, h, d_v, dtype=torch.bfloat16, device=dev)
            o, l = vendor.mla_decode_fwd_ds32(
                q8.contiguous(), qq[..., LATENT:].to(torch.bfloat16).contiguous(), lat.contiguous(), rope.contiguous(), o,
                qo_indptr, kv_indptr, kv_indices, last, 1, page_size=1, nhead_kv=1, sm_scale=sm_scale,
                work_meta_data=meta, work_indptr=indptr, work_info_set=work_info, reduce_indptr=r_indptr,
                reduce_final_map=r_final, reduce_partial_map=r_partial, q_scale=e8m0_bytes(qs, "q"),
                kv_scale=kv_scale.contiguous(), return_lse=True)
            out[live], lse[live] = o.to(q.dtype), l.float()
        return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).transpose(1, 2).contiguous()

    return {"sparse_mla_decode": sparse_mla_decode}


def aiter_ds32_ops() -> dict[str, Callable[..., Any]]:
    """The ds32 variant over the installed aiter (imported on the first call)."""
    class _Lazy:
        def __getattr__(self, name: str) -> Any:
            if name == "mla_decode_fwd_ds32":
                from aiter.mla import mla_decode_fwd_ds32 as f
                return f
            from aiter.ops import attention
            return getattr(attention, name)
    return make_ds32_ops(_Lazy(), ARCH)
