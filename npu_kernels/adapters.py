"""dsport ops over torch_npu's fused kernels.

``make_ops(lib)`` builds the op table over ``lib``: the ``torch_npu`` module
on Ascend, or :mod:`dsport.npu_kernels.contract_models` (the same names and
signatures, in torch) anywhere else. The adapters do the layout translation
of :mod:`dsport.npu_kernels.layouts` and nothing numeric of their own beyond
what the NPU op does not cover (masking rows with nothing to attend, which
the READMEs leave unspecified).

Every vendor call is written with keywords after the schema's ``*``, exactly
as ``npu_native_functions_by_codegen.yaml`` of torch-npu 2.13.0 registers it
(its docstrings are stale: they still show ``sparse_block_size`` positional).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..core.fp8 import FP8_FORMATS
from . import layouts
from .contract_models import SPARSE_COUNTS

D_NOPE, D_ROPE = layouts.LATENT, layouts.ROPE
INDEXER_BLOCK = 128  # key block for the per-row paged indexer call: a multiple of 16 <= 1024, as the README requires


def _refuse(op: str, why: str) -> None:
    """A documented limit the capability table cannot express (head dims): the case is ``unsupported``."""
    raise NotImplementedError(f"{op} on Ascend: {why}")


def _attention_dims(op: str, q: torch.Tensor, d_v: int) -> None:
    if q.shape[-1] != D_NOPE + D_ROPE or d_v != D_NOPE:
        _refuse(op, f"npu_sparse_flash_attention takes D = 512 with rope 64 (d_qk 576, d_v 512); got d_qk {q.shape[-1]}, d_v {d_v}")


def _finish(L: Any, out: torch.Tensor, m: torch.Tensor, s: torch.Tensor,
            valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out [T1, N1, 512], lse [T1, N1], max [T1, N1]) with dsport's rule for a row with no valid
    index (out 0, lse -inf, max -inf), which the NPU documents nothing about."""
    empty = (valid == 0)[:, None]
    lse = L.stats_to_lse(m, s)
    mx = m.float().permute(1, 0, 2).reshape(lse.shape)
    out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
    ninf = torch.full((), float("-inf"), device=out.device)
    return out, torch.where(empty, ninf, lse), torch.where(empty, ninf, mx)


def make_ops(lib: Any, L: Any = layouts) -> dict[str, Callable[..., Any]]:
    """The op table over ``lib`` (torch_npu, or the contract models). ``L`` is the layout
    translation (:mod:`dsport.npu_kernels.layouts`); tests plant bugs by passing another."""

    def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
        _attention_dims("sparse_mla_prefill", q, d_v)
        t, h, _ = q.shape
        s = kv.shape[0]
        if t == 0:  # the kernel takes no empty tensor; there is nothing to compute
            return q.new_zeros(0, h, d_v), torch.zeros(0, h, device=q.device), torch.zeros(0, h, device=q.device)
        rows, valid = L.valid_first(indices[:, 0], limit=s)
        nope, rope = L.split_float_cache(kv[:, 0].to(q.dtype))
        out, m, ssum = lib.npu_sparse_flash_attention(
            q[..., :D_NOPE].contiguous(), nope[:, None], nope[:, None], rows[:, None].contiguous(), float(sm_scale),
            actual_seq_lengths_query=L.lengths_to_prefix_sums(torch.tensor([t], device=q.device)),
            actual_seq_lengths_kv=L.lengths_to_prefix_sums(torch.tensor([s], device=q.device)),
            query_rope=q[..., D_NOPE:].contiguous(), key_rope=rope[:, None],
            sparse_block_size=1, layout_query="TND", layout_kv="TND",
            sparse_mode=L.NO_MASK,  # dsport's causality lives in the indices
            attention_mode=2, return_softmax_lse=True)
        return _finish(L, out, m, ssum, valid)

    def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
        _attention_dims("sparse_mla_decode", q, d_v)
        b, sq, h, _ = q.shape
        nb, bs = kv_cache.shape[:2]
        if b * sq == 0:
            return q.new_zeros(b, sq, h, d_v), torch.zeros(b, h, sq, device=q.device)
        if kv_cache.dtype == torch.uint8:
            nope, rope = L.split_mla_cache(kv_cache, fmt)
        else:
            nope, rope = L.split_float_cache(kv_cache.to(q.dtype))
        nope, rope = nope.to(q.dtype), rope.to(q.dtype)
        # dsport indices are physical slots (block * BS + offset). An identity block table makes the NPU's
        # logical positions equal to them, for every batch: the pool is one sequence of NB * BS tokens.
        table = torch.arange(nb, dtype=torch.int32, device=q.device).expand(b, nb).contiguous()
        rows, valid = L.valid_first(indices.reshape(b * sq, -1), limit=nb * bs)
        out, m, ssum = lib.npu_sparse_flash_attention(
            q[..., :D_NOPE].reshape(b * sq, h, D_NOPE).contiguous(), nope, nope, rows[:, None].contiguous(), float(sm_scale),
            block_table=table,
            actual_seq_lengths_query=L.lengths_to_prefix_sums(torch.full((b,), sq, device=q.device)),
            actual_seq_lengths_kv=torch.full((b,), nb * bs, dtype=torch.int32, device=q.device),  # PA_BSND: lengths, not prefix sums
            query_rope=q[..., D_NOPE:].reshape(b * sq, h, D_ROPE).contiguous(), key_rope=rope,
            sparse_block_size=1, layout_query="TND", layout_kv="PA_BSND", sparse_mode=L.NO_MASK,
            attention_mode=2, return_softmax_lse=True)
        out, lse, _ = _finish(L, out, m, ssum, valid)
        return out.reshape(b, sq, h, d_v), lse.reshape(b, sq, h).permute(0, 2, 1).contiguous()

    def rms_norm(x, w, eps=1e-6, residual=None):
        if x.numel() == 0:
            return (x.clone(), x.clone()) if residual is not None else x.clone()
        gamma = w.to(x.dtype)  # the op takes gamma in x's dtype
        if residual is None:
            y, _ = lib.npu_rms_norm(x.contiguous(), gamma, epsilon=float(eps))
            return y
        y, _, h = lib.npu_add_rms_norm(x.contiguous(), residual.to(x.dtype).contiguous(), gamma, epsilon=float(eps))
        return y, h

    def rope(x, positions, freqs, interleaved):
        if x.numel() == 0:
            return x.clone()
        if x.shape[-1] >= 896 or (interleaved and x.shape[1] >= 1000) or x.shape[1] >= 1000:
            _refuse("rope", f"npu_rotary_mul takes D < 896 and fewer than 1000 heads, got D={x.shape[-1]}, H={x.shape[1]}")
        # cos / sin of the full head dim, laid out as the pairing wants, in x's dtype (the tables the
        # op is fed in practice); the angle t * f is formed in fp32 as DeepSeek's precompute_freqs_cis does
        angle = positions.float()[:, None] * freqs.float()[None, :]
        if interleaved:
            cos, sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)
        else:
            cos, sin = angle.cos().repeat(1, 2), angle.sin().repeat(1, 2)
        r1, r2 = (c.to(x.dtype)[None, :, None, :].contiguous() for c in (cos, sin))  # 1S1D for BSND input
        y = lib.npu_rotary_mul(x.contiguous()[None], r1, r2, rotary_mode="interleave" if interleaved else "half")
        return y[0]

    def moe_gate(x, weight, bias=None, n_group=8, topk_group=4, topk=8, route_scale=2.5, score_func="sigmoid"):
        t, e = x.shape[0], weight.shape[0]
        per = e // n_group
        if e > 2048 or per <= 2 or -(-per // 32) * 32 * n_group > 2048:
            _refuse("moe_gate", f"npu_moe_gating_top_k takes E <= 2048 with more than 2 experts per group and "
                                f"align32(E / groups) * groups <= 2048, got E={e}, n_group={n_group}")
        if t == 0:
            return torch.zeros(0, topk, device=x.device), torch.zeros(0, topk, dtype=torch.int32, device=x.device)
        logits = x.float() @ weight.float().T  # the gate GEMM stays a plain matmul; the op takes scores
        w, ids, _ = lib.npu_moe_gating_top_k(
            logits, topk, bias=None if bias is None else bias.float(), k_group=topk_group, group_count=n_group,
            group_select_mode=0 if bias is None else 1,  # DeepSeek: the group max without bias, top-2 sum with it
            renorm=0, norm_type=1 if score_func == "sigmoid" else 0, routed_scaling_factor=float(route_scale))
        return w.float(), ids.to(torch.int32)

    def grouped(rows: torch.Tensor, b: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """rows [M', K] sorted by group with counts [G] -> [M', N] through one npu_grouped_matmul call."""
        w = b.transpose(1, 2).contiguous()  # dsport's b is [G, N, K]; the op takes weight [G, K, N]
        if w.shape[0] == 1:  # group_list may not have length 1: a second, empty group is exact
            w, counts = torch.cat([w, w], 0), torch.cat([counts, counts.new_zeros(1)])
        (y,) = lib.npu_grouped_matmul([rows.contiguous()], [w], group_list=counts.to(torch.int64), split_item=3,
                                      group_type=0, group_list_type=1)
        return y

    def moe_grouped_gemm_contiguous(a, b, m_indices):
        m, n = a.shape[0], b.shape[1]
        c = torch.zeros(m, n, dtype=a.dtype, device=a.device)  # padding rows (-1) are 0 by dsport's contract
        ids = m_indices.long()
        valid = ids >= 0
        if not bool(valid.any()):
            return c
        # the NPU groups consecutive rows in group order: sort rows by group (stable), padding last
        order = torch.sort(torch.where(valid, ids, b.shape[0]), stable=True).indices
        used = order[: int(valid.sum())]
        c[used] = grouped(a[used], b, torch.bincount(ids[valid], minlength=b.shape[0]))
        return c

    def moe_grouped_gemm_masked(a, b, masked_m):
        g, mm, _ = a.shape
        c = torch.zeros(g, mm, b.shape[1], dtype=a.dtype, device=a.device)
        live = torch.arange(mm, device=a.device)[None, :] < masked_m.long()[:, None]
        if not bool(live.any()):
            return c
        c[live] = grouped(a[live], b, masked_m.long())  # row-major: group 0's rows, then group 1's, ...
        return c

    def moe_experts(x, ids, weights, w1, w3, w2):
        t, d = x.shape
        y = torch.zeros(t, d, dtype=torch.float32, device=x.device)
        flat = ids.reshape(-1).long()
        live = (flat >= 0).nonzero().squeeze(1)  # slot -1 is skipped: its weight is never read
        if live.numel() == 0:
            return y.to(x.dtype)
        eid = flat[live]
        order = live[torch.sort(eid, stable=True).indices]  # (token, slot) pairs grouped by expert
        counts = torch.bincount(flat[order], minlength=w1.shape[0])
        rows = x[order // ids.shape[1]]
        h = torch.nn.functional.silu(grouped(rows, w1, counts).float()) * grouped(rows, w3, counts).float()
        out = grouped(h.to(x.dtype), w2, counts).float() * weights.reshape(-1)[order].float()[:, None]
        return y.index_add_(0, order // ids.shape[1], out).to(x.dtype)

    return {"moe_experts": moe_experts, "moe_grouped_gemm_contiguous": moe_grouped_gemm_contiguous, "moe_grouped_gemm_masked": moe_grouped_gemm_masked,
            "sparse_mla_prefill": sparse_mla_prefill, "sparse_mla_decode": sparse_mla_decode, "rms_norm": rms_norm,
            "rope": rope, "moe_gate": moe_gate}


def lightning_indexer_topk(lib: Any, q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, ks: torch.Tensor,
                           ke: torch.Tensor, topk: int, k_scale: torch.Tensor | None = None) -> torch.Tensor:
    """dsport's ``indexer_logits`` followed by ``topk_select`` as ONE ``npu_lightning_indexer`` call:
    int32 [T, topk], -1 padded (a set, as topk_select's).

    Not an entry of the op table: the NPU op fuses the two stages and never
    returns fp32 logits (its values are bf16/fp16 and training-only), so
    neither spec op maps onto it alone. FP8 q/k are widened to bf16 first,
    exactly (an e4m3 value fits bf16, and a power-of-two k_scale folded into k
    only moves exponents); the NPU's own FP8 indexer (``npu_quant_lightning_indexer``,
    Ascend 950; int8 on A3) takes per-token-head scales instead and is not used.
    Windows: whole rows and right-down-causal rows go as one batch
    (sparse_mode 0 / 3); other windows with ks = 0 as one batch per query
    over a shared paged key pool; ks > 0 is refused."""
    op = "lightning_indexer_topk"
    t, h, d = q.shape
    s = k.shape[0]
    if d != 128 or h > 64:
        _refuse(op, f"npu_lightning_indexer takes head dim 128 and at most 64 query heads (A3), got D={d}, H={h}")
    if ks.numel() and bool((ks != 0).any()):
        _refuse(op, "a window start ks > 0 has no counterpart (sparse_mode 0/3 always start at key 0)")
    if topk not in SPARSE_COUNTS:
        _refuse(op, f"sparse_count {topk} is not in [1, 2048] or {{3072, ..., 8192}}")
    if t == 0:
        return torch.empty(0, topk, dtype=torch.int32, device=q.device)
    fp8 = q.dtype in (f.dtype for f in FP8_FORMATS.values())
    kk = k.float() * k_scale.float()[:, None] if fp8 else k.float()
    qb, kb = q.to(torch.bfloat16).contiguous(), kk.to(torch.bfloat16)
    mode = layouts.as_sparse_mode(ks, ke, s)
    if mode is not None:
        idx, _ = lib.npu_lightning_indexer(
            qb, kb[:, None].contiguous(), weights.float().contiguous(),
            actual_seq_lengths_query=layouts.lengths_to_prefix_sums(torch.tensor([t], device=q.device)),
            actual_seq_lengths_key=layouts.lengths_to_prefix_sums(torch.tensor([s], device=q.device)),
            layout_query="TND", layout_key="TND", sparse_count=topk, sparse_mode=mode)
    else:
        nblk = max(1, -(-s // INDEXER_BLOCK))
        pool = torch.zeros(nblk * INDEXER_BLOCK, d, dtype=torch.bfloat16, device=q.device)
        pool[:s] = kb
        idx, _ = lib.npu_lightning_indexer(
            qb, pool.view(nblk, INDEXER_BLOCK, 1, d), weights.float().contiguous(),
            actual_seq_lengths_query=layouts.lengths_to_prefix_sums(torch.ones(t, dtype=torch.int32, device=q.device)),
            actual_seq_lengths_key=ke.to(torch.int32).contiguous(),  # PA_BSND: one length per batch (= query)
            block_table=torch.arange(nblk, dtype=torch.int32, device=q.device).expand(t, nblk).contiguous(),
            layout_query="TND", layout_key="PA_BSND", sparse_count=topk, sparse_mode=layouts.NO_MASK)
    return layouts.from_valid_first(idx[:, 0])
