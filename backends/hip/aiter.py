"""Adapters from dsport's ops to AMD's aiter library, and aiter's contract models.

Every adapter takes the *vendor* — a namespace with aiter's functions — as an
argument: on a ROCm machine that is the ``aiter`` package itself, here it is
:class:`ContractModel`, torch code reproducing what each aiter function is
documented (by its signature, its wrapper and its own tests' references) to
do, with the source cited on each method. What a ``contract`` verdict proves
is the mapping — layouts, index conventions, FP8 flavour, scale folding,
masking — not aiter's kernels.

The FP8 flavour is the point on AMD: aiter builds its kernels for
``aiter.dtypes.fp8``, which is ``float8_e4m3fnuz`` on gfx942 (MI300) and
``float8_e4m3fn`` on gfx950 (MI350); the bytes handed in are read in that
flavour whatever torch dtype they carry. The contract models read bytes the
same way, so an adapter that forwards e4m3fn bytes to gfx942 unchanged is off
by 2x and fails. On gfx942 the adapters convert e4m3fn operands exactly: the
same bits read as fnuz are half the value, so the scale doubles — except byte
0x80 (-0 under fn, NaN under fnuz), which must become 0x00, and fn's NaNs
(0x7F/0xFF), which must become 0x80. (vLLM's ``normalize_e4m3fn_to_e4m3fnuz``
does the same for weights.) The reverse direction is not exact (fnuz's
smallest subnormal, 2^-10, has no fn code), so gfx950 declares e4m3fn only.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from ..reference.indexer import index_cache_unpack
from ..reference.mla_cache import split_cache
from ...core.errors import ConfigError
from ...core.fp8 import E4M3FN, E4M3FNUZ, Fp8Format, format_for_arch, fp8_format

ARCHS = ("gfx950", "gfx942")
NEG_INF = float("-inf")


def arch() -> str:
    """The AMD target the adapters map for: ``DSPORT_HIP_ARCH``, else the device's, else gfx942.

    gfx942 is the default where no device is present because that is where
    the conventions differ from NVIDIA's (fnuz), so the contract run checks
    the conversions."""
    env = os.environ.get("DSPORT_HIP_ARCH")
    if env:
        if env not in ARCHS:
            raise ConfigError(f"DSPORT_HIP_ARCH: expected one of {list(ARCHS)}, got '{env}'")
        return env
    if torch.cuda.is_available() and getattr(torch.version, "hip", None):
        return torch.cuda.get_device_properties(0).gcnArchName.split(":")[0]
    return "gfx942"


# ---- FP8 flavour conversion ------------------------------------------------------------------
def fn_bytes_as_fnuz(x: torch.Tensor) -> torch.Tensor:
    """e4m3fn codes -> e4m3fnuz codes of HALF the value (multiply the scale by 2): exact.

    0x80 (fn -0) becomes 0x00 (fnuz has no -0: 0x80 is its NaN), and fn's NaN
    codes (0x7F, 0xFF) become 0x80 (under fnuz 0x7F would read as 240)."""
    b = x.contiguous().view(torch.uint8).clone()
    nan = (b & 0x7F) == 0x7F
    b[b == 0x80] = 0
    b[nan] = 0x80
    return b.view(E4M3FNUZ.dtype)


def to_arch(x: torch.Tensor, target: Fp8Format) -> tuple[torch.Tensor, float]:
    """FP8 tensor in the target's flavour, and the factor its scale must be multiplied by."""
    have = fp8_format(x.dtype, "hip", "fp8 operand")
    if have is target:
        return x.contiguous(), 1.0
    if have is E4M3FN and target is E4M3FNUZ:
        return fn_bytes_as_fnuz(x), 2.0
    raise TypeError(f"hip adapters: {have} operands cannot be mapped exactly onto {target} ({target} is what aiter "
                    "computes in on this arch); the capability table declares this unsupported")


def as_arch_bytes(x: torch.Tensor, target: Fp8Format) -> torch.Tensor:
    """How an aiter kernel built for ``target`` reads ``x``: its bytes, in the target's flavour."""
    return x.contiguous().view(torch.uint8).view(target.dtype)


# ---- contract models -------------------------------------------------------------------------
class ContractModel:
    """aiter's functions as documented, in torch (fp32 arithmetic, as the kernels accumulate)."""

    def __init__(self, target: str):
        self.arch = target
        self.fp8 = format_for_arch(target)  # aiter.dtypes.fp8 on this arch

    def fp8_mqa_logits(self, q_fp8: torch.Tensor, kv_fp8: torch.Tensor, kv_scales: torch.Tensor, weights: torch.Tensor,
                       cu_starts: torch.Tensor, cu_ends: torch.Tensor, clean_logits: bool = True) -> torch.Tensor:
        """aiter/ops/triton/attention/fp8_mqa_logits.py; reference ``ref_fp8_mqa_logits`` in
        op_tests/triton_tests/attention/test_fp8_mqa_logits.py: logits[t, s] = sum_h relu(q[t,h].k[s] * kv_scales[s])
        * weights[t, h] for s in [ks, ke). With clean_logits the rest is -inf; without it the row holds the
        window's logits at [0, ke - ks) (the test re-bases them: ``tmp[i, ks:ke] = logits[i, :ke-ks]``) and the
        rest is unspecified — NaN here, so an adapter that reads it fails."""
        q = as_arch_bytes(q_fp8, self.fp8).float()
        k = as_arch_bytes(kv_fp8, self.fp8).float() * kv_scales.float()[:, None]
        score = torch.einsum("thd,sd->ths", q, k).relu()
        logits = (score * weights.float()[:, :, None]).sum(1)
        s = torch.arange(k.shape[0])
        inside = (s[None, :] >= cu_starts.long()[:, None]) & (s[None, :] < cu_ends.long()[:, None])
        if clean_logits:
            return logits.masked_fill(~inside, NEG_INF)
        out = torch.full_like(logits, math.nan)
        for t in range(logits.shape[0]):
            lo, hi = int(cu_starts[t]), int(cu_ends[t])
            out[t, : max(hi - lo, 0)] = logits[t, lo:hi]
        return out

    def deepgemm_fp8_paged_mqa_logits(self, q_fp8: torch.Tensor, kv_cache: torch.Tensor, weights: torch.Tensor,
                                      out_logits: torch.Tensor, context_lens: torch.Tensor, kv_indices: torch.Tensor,
                                      max_model_len: int, Preshuffle: bool = False, KVBlockSize: int = 1,
                                      **tuning: Any) -> None:
        """aiter/ops/triton/attention/pa_mqa_logits.py (``deepgemm_fp8_paged_mqa_logits``) and the reference
        ``_ref_fp8_paged_mqa_logits_from_packed`` of op_tests/triton_tests/attention/test_fp8_paged_mqa_logits.py.
        kv_cache [num_pages, KVBlockSize, 1, D + 4] bytes; each page is viewed as KVBlockSize*D fp8 bytes, then
        KVBlockSize fp32 scales — with the default KVBlockSize = 1 that is D bytes then a 4-byte scale *per
        token*. kv_indices [B, max_blocks] are page ids. Row b*next_n + j attends positions
        t <= context_lens[b] - next_n + j, t < max_model_len; writes only those entries of out_logits."""
        b, next_n, h, d = q_fp8.shape
        pages = kv_cache.shape[0]
        if kv_cache.shape[1] != KVBlockSize:
            raise AssertionError(f"block_Size {kv_cache.shape[1]} == KVBlockSize {KVBlockSize}")
        flat = kv_cache.contiguous().view(torch.uint8).reshape(pages, KVBlockSize * (d + 4))
        k = flat[:, : KVBlockSize * d].contiguous().view(self.fp8.dtype).float().reshape(pages, KVBlockSize, d)
        sc = flat[:, KVBlockSize * d:].contiguous().view(torch.float32).reshape(pages, KVBlockSize)
        q = as_arch_bytes(q_fp8, self.fp8).float()
        for bi in range(b):
            ctx = int(context_lens[bi])
            for j in range(next_n):
                row, qpos = bi * next_n + j, ctx - next_n + j
                n = min(qpos + 1, max_model_len)
                if n <= 0:
                    continue
                t = torch.arange(n)
                page = kv_indices[bi, t // KVBlockSize].long()
                kk = k[page, t % KVBlockSize] * sc[page, t % KVBlockSize][:, None]
                score = (q[bi, j] @ kk.T).relu()  # [H, n]
                out_logits[row, :n] = (score * weights[row].float()[:, None]).sum(0)

    def top_k_per_row_prefill(self, logits: torch.Tensor, row_starts: torch.Tensor, row_ends: torch.Tensor,
                              indices: torch.Tensor, values: torch.Tensor | None, num_rows: int, stride0: int,
                              stride1: int) -> None:
        """csrc/kernels/topk_per_row_kernels.cu: k = indices.shape[1]; for each row the indices of the k largest
        logits in [row_start, row_end), as *absolute* column indices (``i + rowStart``); a row with at most k
        entries lists them all, then -1. Order unspecified. (op_tests/test_topk_per_row.py compares sets.)"""
        k = indices.shape[1]
        for r in range(num_rows):
            lo, hi = int(row_starts[r]), int(row_ends[r])
            row = logits.as_strided((logits.shape[1],), (stride1,), r * stride0)[lo:hi].float()
            indices[r] = -1
            if hi - lo <= k:
                indices[r, : hi - lo] = torch.arange(lo, hi, dtype=indices.dtype)
            else:
                indices[r] = (torch.topk(row, k).indices + lo).to(indices.dtype)
            if values is not None:
                values[r] = torch.where(indices[r] >= 0, logits[r].gather(0, indices[r].clamp_min(0).long()), NEG_INF)

    def top_k_per_row_decode(self, logits: torch.Tensor, next_n: int, seq_lens: torch.Tensor, indices: torch.Tensor,
                             num_rows: int, stride0: int, stride1: int) -> None:
        """The decode form (same source): row r attends [0, seq_lens[r // next_n] - next_n + r % next_n + 1)."""
        r = torch.arange(num_rows)
        ends = (seq_lens.long()[r // next_n] - next_n + r % next_n + 1).int()
        self.top_k_per_row_prefill(logits, torch.zeros_like(ends), ends, indices, None, num_rows, stride0, stride1)

    def gemm_a8w8_blockscale(self, XQ: torch.Tensor, WQ: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                             dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """aiter.gemm_a8w8_blockscale (CK), reference ``run_torch`` of op_tests/test_gemm_a8w8_blockscale.py:
        x dequantized per (row, 128-block of K) by x_scale [M, K/128], w per 128x128 block by w_scale
        [N/128, K/128], then one fp32 GEMM, cast to ``dtype``."""
        m, k = XQ.shape
        n = WQ.shape[0]
        x = as_arch_bytes(XQ, self.fp8).float() * x_scale.float().repeat_interleave(128, 1)[:, :k]
        ws = w_scale.float().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)[:, :k]
        w = as_arch_bytes(WQ, self.fp8).float() * ws
        return (x @ w.T).to(dtype)

    def mla_decode_fwd(self, q: torch.Tensor, kv_buffer: torch.Tensor, o: torch.Tensor, qo_indptr: torch.Tensor,
                       kv_indptr: torch.Tensor, kv_indices: torch.Tensor, kv_last_page_lens: torch.Tensor,
                       max_seqlen_q: int, page_size: int = 1, nhead_kv: int = 1, sm_scale: float | None = None,
                       return_lse: bool = False, **rest: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """aiter/mla.py ``mla_decode_fwd``; reference ``torch_mla_extend`` / ``ref_masked_attention`` of
        op_tests/test_mla_sparse.py. q [total_q, H, 576], kv_buffer [pages, page_size, 1, 576]; batch b's keys are
        the pages kv_indices[kv_indptr[b]:kv_indptr[b+1]] (last page holding kv_last_page_lens[b] tokens); V is
        the first o.shape[-1] dims of each key. o is written in place (bf16); lse [total_q, H] natural log.
        Modelled for page_size 1 and one query per batch entry (max_seqlen_q 1), the form sparse decode uses."""
        if page_size != 1 or max_seqlen_q != 1:
            raise NotImplementedError("contract model covers page_size 1, max_seqlen_q 1 (the sparse-decode form)")
        dv = o.shape[-1]
        lse = torch.empty(q.shape[0], q.shape[1], dtype=torch.float32)
        kv = kv_buffer.reshape(kv_buffer.shape[0], -1).float()
        scale = sm_scale if sm_scale is not None else q.shape[-1] ** -0.5
        for bi in range(qo_indptr.numel() - 1):
            keys = kv[kv_indices[int(kv_indptr[bi]): int(kv_indptr[bi + 1])].long()]
            for r in range(int(qo_indptr[bi]), int(qo_indptr[bi + 1])):
                s = (q[r].float() @ keys.T) * scale  # [H, n]
                m = s.amax(-1, keepdim=True)
                p = torch.exp(s - m)
                l = p.sum(-1, keepdim=True)
                o[r] = ((p @ keys[:, :dv]) / l).to(o.dtype)
                lse[r] = (m + torch.log(l)).squeeze(-1)
        return o, lse if return_lse else None


    def fused_moe(self, hidden_states: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_weight: torch.Tensor,
                  topk_ids: torch.Tensor, expert_mask: torch.Tensor | None = None, activation: Any = "silu",
                  quant_type: Any = None, **rest: Any) -> torch.Tensor:
        """aiter/fused_moe.py ``fused_moe`` (unquantized, SEPARATED gate mode) as its reference ``torch_moe``:
        w1 [E_local, 2*I, D] holds gate then up, w2 [E_local, D, I]; fp32 arithmetic; topk_ids are global
        expert ids, mapped through ``expert_mask`` (1 = local) to local ones, non-local ids contribute an
        all-zero row — which is still multiplied by its weight: a NaN weight there gives NaN."""
        if activation != "silu":
            raise NotImplementedError("contract model covers activation Silu")
        x = hidden_states.float()
        ids = topk_ids.long()
        if expert_mask is not None:
            local = expert_mask.long().cumsum(0) - 1
            local[expert_mask == 0] = -1
            ids = local[ids]
        t, k = ids.shape
        inter = w2.shape[2]
        out = torch.zeros(t, k, x.shape[1], dtype=torch.float32)
        for e in range(w1.shape[0]):
            m = ids == e
            if m.any():
                a = x.unsqueeze(1).expand(t, k, -1)[m] @ w1[e].float().T
                gate, up = a.split([inter, inter], dim=-1)
                out[m] = (torch.nn.functional.silu(gate) * up) @ w2[e].float().T
        return (out * topk_weight.float().view(t, k, 1)).sum(1).to(hidden_states.dtype)


# ---- adapters ------------------------------------------------------------------------------
def make_ops(vendor: Any, target: str, to_arch: Callable[[torch.Tensor, Fp8Format], tuple[torch.Tensor, float]] = to_arch
             ) -> dict[str, Callable[..., Any]]:
    """The op table of adapters over ``vendor`` (``aiter`` or a :class:`ContractModel`) for ``target``;
    ``to_arch`` is the FP8 flavour mapping (a parameter so that tests can plant a wrong one)."""
    fp8 = format_for_arch(target)

    def indexer_logits(q, k, weights, ks, ke, k_scale=None):
        if k_scale is None or q.dtype not in (E4M3FN.dtype, E4M3FNUZ.dtype):
            raise TypeError("indexer_logits (hip/aiter): fp8_mqa_logits takes fp8 q and k with k_scale")
        qa, fq = to_arch(q, fp8)
        ka, fk = to_arch(k, fp8)
        # q has no scale operand: its factor goes into the weights (exact: a power of two)
        logits = vendor.fp8_mqa_logits(qa, ka, (k_scale.float() * fk).contiguous(), (weights.float() * fq).contiguous(),
                                       ks.int().contiguous(), ke.int().contiguous(), clean_logits=True)
        return logits

    def indexer_logits_paged(q, k_cache, weights, block_table, seqlens):
        fmt = fp8_format(q.dtype, "indexer_logits_paged", "q")
        b, h, d = q.shape
        nb, bs = k_cache.shape[:2]
        mb = block_table.shape[1]
        k8, k_scale = index_cache_unpack(k_cache, fmt)
        k8a, fk = to_arch(k8, fp8)
        qa, fq = to_arch(q, fp8)
        # aiter's default page size is 1: one 132-byte row per token, its scale right after its bytes
        rows = torch.cat([k8a.reshape(nb * bs, d).view(torch.uint8),
                          (k_scale.reshape(nb * bs, 1).float() * fk).contiguous().view(torch.uint8)], dim=1)
        pos = torch.arange(mb * bs)
        table = block_table.long()
        slots = torch.where(table[:, pos // bs] >= 0, table[:, pos // bs] * bs + pos % bs, 0).int()  # [B, MB*BS]
        out = torch.full((b, mb * bs), NEG_INF, dtype=torch.float32, device=q.device)
        if b:
            vendor.deepgemm_fp8_paged_mqa_logits(qa.reshape(b, 1, h, d), rows.reshape(nb * bs, 1, 1, d + 4),
                                                 (weights.float() * fq).contiguous(), out, seqlens.int().contiguous(),
                                                 slots.contiguous(), mb * bs)
        return out

    def topk_select(logits, k, ks=None, ke=None):
        t, s = logits.shape
        x = logits.float().contiguous()
        idx = torch.empty(t, k, dtype=torch.int32, device=logits.device)
        if ks is None:
            ks = torch.zeros(t, dtype=torch.int32, device=logits.device)
            ke = torch.full((t,), s, dtype=torch.int32, device=logits.device)
        if t and bool((ks == 0).all()):
            # decode rows (windows from 0): the decode form, one query per sequence (next_n 1), so row r ends
            # at seq_lens[r] - 1 + 0 + 1 = ke[r]
            vendor.top_k_per_row_decode(x, 1, ke.int().contiguous(), idx, t, x.stride(0), x.stride(1))
        elif t:
            vendor.top_k_per_row_prefill(x, ks.int().contiguous(), ke.int().contiguous(), idx, None, t, x.stride(0), x.stride(1))
        return idx

    def fp8_gemm(a, sa, b, sb):
        aa, fa = to_arch(a, fp8)
        ba, fb = to_arch(b, fp8)
        m, n = a.shape[0], b.shape[0]
        if m == 0:
            return torch.empty(0, n, dtype=torch.bfloat16, device=a.device)
        return vendor.gemm_a8w8_blockscale(aa, ba, (sa.float() * fa).contiguous(), (sb.float() * fb).contiguous(),
                                           torch.bfloat16)

    def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
        b, sq, h, dqk = q.shape
        flat = kv_cache.reshape(-1, kv_cache.shape[-1])
        idx = indices.reshape(b * sq, indices.shape[-1]).long()
        valid = (idx >= 0) & (idx < flat.shape[0])
        # SPEC §10: only named rows are read; aiter's mla_decode_fwd reads bf16 (or per-tensor-scaled fp8)
        # rows, not FlashMLA's 656-byte tile-scaled ones, so the named rows are dequantized to bf16
        # (e4m3 x 2^k is exact in bf16) into a page-size-1 buffer, each query getting its own kv list.
        slots = idx[valid]
        if kv_cache.dtype == torch.uint8:
            lat, scales, rope = split_cache(flat[slots], fmt, "sparse_mla_decode")
            rows = torch.cat([(lat.float().unflatten(-1, (4, 128)) * scales.unsqueeze(-1)).flatten(-2), rope.float()], -1)
        else:
            rows = flat[slots].float()
        rows = rows.to(torch.bfloat16)
        counts = valid.sum(1)
        dev = q.device
        out = torch.zeros(b * sq, h, d_v, dtype=q.dtype, device=dev)
        lse = torch.full((b * sq, h), NEG_INF, dtype=torch.float32, device=dev)
        live = (counts > 0).nonzero().flatten()  # rows with no valid index: out 0, lse -inf, no vendor call
        if live.numel():
            # the gathered rows are already in query order: query i's keys are rows kv_indptr[i] .. kv_indptr[i+1]
            kv_indptr = torch.cat([torch.zeros(1, dtype=torch.int32, device=dev), counts[live].cumsum(0).int()])
            kv_indices = torch.arange(int(kv_indptr[-1]), dtype=torch.int32, device=dev)
            o = torch.empty(live.numel(), h, d_v, dtype=torch.bfloat16, device=dev)
            qo_indptr = torch.arange(live.numel() + 1, dtype=torch.int32, device=dev)
            o, l = vendor.mla_decode_fwd(q.reshape(b * sq, h, dqk)[live].to(torch.bfloat16).contiguous(),
                                         rows.reshape(-1, 1, 1, dqk), o, qo_indptr, kv_indptr, kv_indices,
                                         torch.ones(live.numel(), dtype=torch.int32, device=dev), 1, page_size=1, sm_scale=sm_scale,
                                         return_lse=True)
            out[live], lse[live] = o.to(q.dtype), l.float()
        return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).transpose(1, 2).contiguous()

    def moe_experts(x, ids, weights, w1, w3, w2):
        e = w1.shape[0]
        # aiter takes gate and up as one [E, 2I, D] weight, gate first (GateMode.SEPARATED)
        w13 = torch.cat([w1, w3], dim=1).contiguous()
        # dsport's -1 (an expert on another rank) becomes a global id aiter's expert_mask marks non-local;
        # its weight is zeroed first, because aiter multiplies the (zero) row by it and 0 * NaN is NaN
        remote = ids < 0
        gids = torch.where(remote, torch.full_like(ids, e), ids).int().contiguous()
        mask = torch.cat([torch.ones(e, dtype=torch.int32, device=x.device), torch.zeros(1, dtype=torch.int32, device=x.device)])
        w = torch.where(remote, torch.zeros((), dtype=torch.float32, device=x.device), weights.float()).contiguous()
        if x.shape[0] == 0:
            return torch.empty(0, x.shape[1], dtype=x.dtype, device=x.device)
        return vendor.fused_moe(x.contiguous(), w13, w2.contiguous(), w, gids, expert_mask=mask)

    return {"indexer_logits": indexer_logits, "indexer_logits_paged": indexer_logits_paged, "topk_select": topk_select,
            "fp8_gemm": fp8_gemm, "sparse_mla_decode": sparse_mla_decode, "moe_experts": moe_experts}


def aiter_ops(target: str) -> dict[str, Callable[..., Any]]:
    """The adapters over the installed aiter package (imported on the first call)."""
    class _Lazy:
        def __getattr__(self, name: str) -> Any:
            import aiter as _aiter

            if name == "fp8_mqa_logits":
                from aiter.ops.triton.attention.fp8_mqa_logits import fp8_mqa_logits as f
                return f
            if name == "fused_moe":  # aiter.fused_moe is also the module's name
                from aiter.fused_moe import fused_moe as f
                return f
            if name == "deepgemm_fp8_paged_mqa_logits":
                from aiter.ops.triton.attention.pa_mqa_logits import deepgemm_fp8_paged_mqa_logits as f
                return f
            return getattr(_aiter, name)
    return make_ops(_Lazy(), target)
