"""FP8 GEMM, the indexer's MQA logits (prefill and paged decode) and the
grouped GEMMs served by DeepGEMM on SM90, every convention mapped to dsport's
spec, with the contract models the mapping is checked against where DeepGEMM
cannot run.

Sources (deepseek-ai/DeepGEMM): ``README.md`` (NT layout; the ``fp8_mqa_logits``
formula and ``clean_logits``; SM90 takes FP32 scale factors, packed UE8M0 is
SM100's); ``csrc/utils/layout.hpp`` ``check_sf_layout`` (SFA MN-major with
``stride(-1) == get_tma_aligned_size(M, 4)``, i.e. M padded to 4 for 16-byte
TMA rows; SFB contiguous or transposed-contiguous on SM90) and
``get_default_recipe`` (SM90: float scales only, 1 x 128 / 128 x 128 blocks);
``tests/test_attention.py`` (``ref_fp8_mqa_logits``, ``ref_paged_mqa_logits``,
``kv_cache_cast_to_fp8``: each 64-token block holds 64 x D FP8 bytes then 64
fp32 scales; block_kv 64 on SM90; the paged tests run ``clean_logits=False``);
``tests/generators.py`` (contiguous layout: each expert segment aligned to
``get_mk_alignment_for_contiguous_layout()`` = 128, padding rows -1; masked
layout: rows at or past ``masked_m[g]`` are not written).

Mappings the adapters own:

* dsport's ``sa`` [M, K/128] row-major -> an MN-major copy whose column stride
  is M rounded up to 4 (``mn_major_tma_aligned``);
* paged logits past ``seqlens[b]`` are whatever the kernel left there
  (``clean_logits=False``): the adapter writes -inf, dsport's contract;
* grouped GEMM rows with ``m_indices == -1`` and masked rows past
  ``masked_m[g]`` are left unwritten by DeepGEMM: the adapter writes 0;
* the grouped FP8 GEMMs' ``sa`` goes MN-major as for ``fp8_gemm`` (the
  masked layout's [G, MM, K/128] per group, groups one after another:
  ``check_sf_layout`` with ``num_groups``); ``sb`` [G, N/128, K/128] stays
  contiguous (SM90's SFB check);
* empty problems (M = 0, T = 0, B = 0, G = 0) never reach the library.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from ...core.capabilities import Capability, Limit, declare

BLOCK = 128
MK_ALIGNMENT = 128  # get_mk_alignment_for_contiguous_layout() on SM90
PAGE = 64           # the paged MQA-logits kernel's block_kv on SM90
NUM_SMS_H200 = 132
_BF16 = (torch.bfloat16,)
_E4M3FN = ("e4m3fn",)
# the adapters' limits, the same over the library and over its contract models
FP8_GEMM_CAPABILITY = Capability(fp8_formats=_E4M3FN, note="DeepGEMM fp8_gemm_nt: e4m3fn (Hopper has no e4m3fnuz), fp32 scales")
MQA_LOGITS_CAPABILITY = Capability(dtypes=(), fp8_formats=_E4M3FN, limits=(Limit("D", values=(128,), why="the indexer's head dim"),),
                                   note="DeepGEMM fp8_mqa_logits: e4m3fn q and k, D = 128")
PAGED_LOGITS_CAPABILITY = Capability(fp8_formats=_E4M3FN, page_sizes=(PAGE,),
                                     note="DeepGEMM fp8_paged_mqa_logits: e4m3fn, 64-token blocks on SM90")
GROUPED_CAPABILITY = Capability(dtypes=_BF16, arg_dtypes=(("a", _BF16), ("b", _BF16)),
                                note="DeepGEMM m_grouped_bf16_gemm_nt_*: bf16 a and b, segments aligned to 128")
GROUPED_FP8_CAPABILITY = Capability(fp8_formats=_E4M3FN,
                                    note="DeepGEMM m_grouped_fp8_gemm_nt_*: e4m3fn a and b, fp32 scales, segments aligned to 128")


def tma_aligned(mn: int, element_size: int = 4) -> int:
    """``get_tma_aligned_size``: TMA moves 16-byte rows, so M is padded to 16 / element_size."""
    step = 16 // element_size
    return (mn + step - 1) // step * step


def mn_major_tma_aligned(sf: torch.Tensor) -> torch.Tensor:
    """[M, KB] fp32 -> the same values, MN-major, column stride tma_aligned(M)."""
    m, kb = sf.shape
    store = torch.zeros((kb, tma_aligned(m)), dtype=torch.float32, device=sf.device)
    store[:, :m] = sf.float().T
    return store[:, :m].T


def _fp8_e4m3fn(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype != torch.float8_e4m3fn:
        raise NotImplementedError(f"{op}: DeepGEMM on SM90 takes e4m3fn {name}, got {t.dtype}")


# -- adapters --------------------------------------------------------------------
def fp8_gemm_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(FP8_GEMM_CAPABILITY)
    def fp8_gemm(a, sa, b, sb):
        _fp8_e4m3fn("fp8_gemm", "a", a)
        _fp8_e4m3fn("fp8_gemm", "b", b)
        m, n = a.shape[0], b.shape[0]
        d = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
        if m == 0 or n == 0:
            return d
        vendor((a.contiguous(), mn_major_tma_aligned(sa)), (b.contiguous(), sb.float().contiguous()), d)
        return d
    return fp8_gemm


def mqa_logits_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(MQA_LOGITS_CAPABILITY)
    def indexer_logits(q, k, weights, ks, ke, k_scale=None):
        _fp8_e4m3fn("indexer_logits", "q", q)
        if q.shape[-1] != 128:
            raise NotImplementedError(f"indexer_logits: the DeepGEMM adapter is declared for D = 128, got {q.shape[-1]}")
        t, s = q.shape[0], k.shape[0]
        if t == 0 or s == 0:
            return torch.full((t, s), -math.inf, dtype=torch.float32, device=q.device)
        return vendor(q.contiguous(), (k.contiguous(), k_scale.float().contiguous()), weights.float().contiguous(),
                      ks.int().contiguous(), ke.int().contiguous(), clean_logits=True)
    return indexer_logits


def paged_mqa_logits_adapter(vendor: Callable[..., Any], metadata: Callable[..., Any] | None) -> Callable[..., Any]:
    @declare(PAGED_LOGITS_CAPABILITY)
    def indexer_logits_paged(q, k_cache, weights, block_table, seqlens):
        _fp8_e4m3fn("indexer_logits_paged", "q", q)
        b, h, d = q.shape
        nb, bs, w = k_cache.shape
        if bs != PAGE:
            raise NotImplementedError(f"indexer_logits_paged: DeepGEMM's SM90 kernel reads {PAGE}-token blocks, got {bs}")
        width = block_table.shape[1] * bs
        if b == 0:
            return torch.full((0, width), -math.inf, dtype=torch.float32, device=q.device)
        lens = seqlens.int().contiguous()
        sched = metadata(lens, bs, NUM_SMS_H200) if metadata is not None else None
        logits = vendor(q.unsqueeze(1).contiguous(), k_cache.contiguous().view(nb, bs, 1, w), weights.float().contiguous(), lens,
                        block_table.int().contiguous(), sched, width, clean_logits=False)
        pos = torch.arange(width, device=q.device)
        return torch.where(pos[None, :] < lens[:, None], logits, -math.inf)  # positions past the context: -inf
    return indexer_logits_paged


def _zero_padding_rows(d: torch.Tensor, m_indices: torch.Tensor) -> torch.Tensor:
    """DeepGEMM leaves the rows of -1 padding unwritten; dsport's contract makes them 0."""
    return torch.where(m_indices[:, None] >= 0, d, torch.zeros((), dtype=d.dtype, device=d.device))


def _zero_rows_past_counts(d: torch.Tensor, masked_m: torch.Tensor) -> torch.Tensor:
    """DeepGEMM's masked GEMM leaves rows at or past masked_m[g] undefined; dsport's contract makes them 0."""
    rows = torch.arange(d.shape[1], device=d.device)
    return torch.where((rows[None, :] < masked_m[:, None]).unsqueeze(-1), d, torch.zeros((), dtype=d.dtype, device=d.device))


def contiguous_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(GROUPED_CAPABILITY)
    def moe_grouped_gemm_contiguous(a, b, m_indices):
        if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:
            raise NotImplementedError(f"moe_grouped_gemm_contiguous: DeepGEMM's grouped GEMM is bf16 here, got {a.dtype}, {b.dtype}")
        m, n = a.shape[0], b.shape[1]
        d = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
        if m == 0:
            return d
        idx = m_indices.int().contiguous()
        vendor(a.contiguous(), b.contiguous(), d, idx)
        return _zero_padding_rows(d, idx)
    return moe_grouped_gemm_contiguous


def masked_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(GROUPED_CAPABILITY)
    def moe_grouped_gemm_masked(a, b, masked_m):
        if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16:
            raise NotImplementedError(f"moe_grouped_gemm_masked: DeepGEMM's grouped GEMM is bf16 here, got {a.dtype}, {b.dtype}")
        g, mm, _ = a.shape
        n = b.shape[1]
        d = torch.empty((g, mm, n), dtype=torch.bfloat16, device=a.device)
        if g == 0 or mm == 0:
            return d
        counts = masked_m.int().contiguous()
        vendor(a.contiguous(), b.contiguous(), d, counts, max(int(counts.max()), 1))
        return _zero_rows_past_counts(d, counts)
    return moe_grouped_gemm_masked


def mn_major_tma_aligned_groups(sf: torch.Tensor) -> torch.Tensor:
    """[G, M, KB] fp32 -> the same values, MN-major per group: column stride tma_aligned(M), group stride that times KB."""
    g, m, kb = sf.shape
    store = torch.zeros((g, kb, tma_aligned(m)), dtype=torch.float32, device=sf.device)
    store[:, :, :m] = sf.float().transpose(1, 2)
    return store[:, :, :m].transpose(1, 2)


def fp8_contiguous_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(GROUPED_FP8_CAPABILITY)
    def moe_grouped_fp8_gemm_contiguous(a, sa, b, sb, m_indices):
        _fp8_e4m3fn("moe_grouped_fp8_gemm_contiguous", "a", a)
        m, n = a.shape[0], b.shape[1]
        d = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
        if m == 0:
            return d
        idx = m_indices.int().contiguous()
        vendor((a.contiguous(), mn_major_tma_aligned(sa)), (b.contiguous(), sb.float().contiguous()), d, idx)
        return _zero_padding_rows(d, idx)
    return moe_grouped_fp8_gemm_contiguous


def fp8_masked_adapter(vendor: Callable[..., Any]) -> Callable[..., Any]:
    @declare(GROUPED_FP8_CAPABILITY)
    def moe_grouped_fp8_gemm_masked(a, sa, b, sb, masked_m):
        _fp8_e4m3fn("moe_grouped_fp8_gemm_masked", "a", a)
        g, mm, _ = a.shape
        d = torch.empty((g, mm, b.shape[1]), dtype=torch.bfloat16, device=a.device)
        if g == 0 or mm == 0:
            return d
        counts = masked_m.int().contiguous()
        vendor((a.contiguous(), mn_major_tma_aligned_groups(sa)), (b.contiguous(), sb.float().contiguous()), d, counts,
               max(int(counts.max()), 1))
        return _zero_rows_past_counts(d, counts)
    return moe_grouped_fp8_gemm_masked


#: (new name, legacy name) of the FP8 GEMM: DeepGEMM's 2025 API refactor renamed
#: gemm_fp8_fp8_bf16_nt to fp8_gemm_nt with the same (fp8, scales) pair arguments; vLLM resolves the
#: two the same way (vllm-project/vllm vllm/utils/deep_gemm.py, _resolve_symbol). vLLM and sglang
#: import the standalone package under its own name, deep_gemm (vLLM's build installs it from a
#: pinned commit, cmake/external_projects/deepgemm.cmake): there is no renamed copy to look for.
FP8_GEMM_NAMES = ("fp8_gemm_nt", "gemm_fp8_fp8_bf16_nt")


def vendor_ops(lib: Any) -> dict[str, Callable[..., Any]]:
    """The adapters over an importable ``deep_gemm`` module, for the entry points it has (the
    indexer logits and the bf16 grouped GEMMs exist only in the refactored API)."""
    ops: dict[str, Callable[..., Any]] = {}
    gemm = next((getattr(lib, n) for n in FP8_GEMM_NAMES if hasattr(lib, n)), None)
    if gemm is not None:
        ops["fp8_gemm"] = fp8_gemm_adapter(gemm)
    if hasattr(lib, "fp8_mqa_logits"):
        ops["indexer_logits"] = mqa_logits_adapter(lib.fp8_mqa_logits)
    if hasattr(lib, "fp8_paged_mqa_logits"):
        ops["indexer_logits_paged"] = paged_mqa_logits_adapter(lib.fp8_paged_mqa_logits,
                                                               getattr(lib, "get_paged_mqa_logits_metadata", None))
    if hasattr(lib, "m_grouped_bf16_gemm_nt_contiguous"):
        ops["moe_grouped_gemm_contiguous"] = contiguous_adapter(lib.m_grouped_bf16_gemm_nt_contiguous)
    if hasattr(lib, "m_grouped_bf16_gemm_nt_masked"):
        ops["moe_grouped_gemm_masked"] = masked_adapter(lib.m_grouped_bf16_gemm_nt_masked)
    if hasattr(lib, "m_grouped_fp8_gemm_nt_contiguous"):
        ops["moe_grouped_fp8_gemm_contiguous"] = fp8_contiguous_adapter(lib.m_grouped_fp8_gemm_nt_contiguous)
    if hasattr(lib, "m_grouped_fp8_gemm_nt_masked"):
        ops["moe_grouped_fp8_gemm_masked"] = fp8_masked_adapter(lib.m_grouped_fp8_gemm_nt_masked)
    return ops


# -- contract models ---------------------------------------------------------------
def _check_sfa(sf: torch.Tensor, mn: int, k: int) -> None:
    """check_sf_layout(sf, mn, k, 1, 128, tma_stride_check=True)."""
    assert sf.dtype == torch.float32, "SM90 recipe: float scale factors"
    assert sf.shape == (mn, math.ceil(k / BLOCK)), f"sfa shape {tuple(sf.shape)}"
    assert sf.stride(-2) == 1 or mn == 1, "sfa must be MN-major"
    assert sf.stride(-1) == tma_aligned(mn), f"sfa stride(-1) {sf.stride(-1)} != TMA-aligned {tma_aligned(mn)}"


def _check_sfb(sf: torch.Tensor, n: int, k: int) -> None:
    """check_sf_layout(sf, n, k, 128, 128, sm90_sfb_check=True)."""
    assert sf.dtype == torch.float32 and sf.shape == (math.ceil(n / BLOCK), math.ceil(k / BLOCK)), f"sfb {tuple(sf.shape)}"
    assert (sf.stride(-1) == 1 and sf.stride(-2) == sf.shape[-1]) or (sf.stride(-1) == sf.shape[-2] and sf.stride(-2) == 1)


def fp8_gemm_nt_model(a_pair, b_pair, d, c=None, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
    """``fp8_gemm_nt``: D = A @ B^T, each 128-wide K block promoted to fp32 and
    scaled by sfa[m, kb] * sfb[n // 128, kb], written to the bf16 ``d``."""
    (a, sfa), (b, sfb) = a_pair, b_pair
    assert a.dtype == b.dtype == torch.float8_e4m3fn and a.stride(-1) == 1 and b.stride(-1) == 1, "NT: K-major e4m3 A and B"
    m, k = a.shape
    n = b.shape[0]
    _check_sfa(sfa, m, k)
    _check_sfb(sfb, n, k)
    kb = k // BLOCK
    part = torch.einsum("mkc,nkc->mnk", a.float().reshape(m, kb, BLOCK), b.float().reshape(n, kb, BLOCK))
    sb_rows = sfb.repeat_interleave(BLOCK, 0)[:n]
    d.copy_((part * sfa[:, None, :] * sb_rows[None, :, :]).sum(-1).to(d.dtype))


def _mqa(q: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """README formula: sum_h relu(q[i, h] . (k_j * s_j)) * w[i, h] -> [T, S] fp32."""
    score = torch.einsum("thd,sd->ths", q.float(), k.float() * k_scale.float()[:, None])
    return torch.einsum("ths,th->ts", score.relu(), weights.float())


def fp8_mqa_logits_model(q, kv, weights, cu_seq_len_k_start, cu_seq_len_k_end, clean_logits=True, **_):
    k, k_scale = kv
    assert q.dtype == k.dtype == torch.float8_e4m3fn and k_scale.dtype == torch.float32 and weights.dtype == torch.float32
    logits = _mqa(q, k, k_scale, weights)
    pos = torch.arange(k.shape[0])
    inside = (pos[None, :] >= cu_seq_len_k_start[:, None]) & (pos[None, :] < cu_seq_len_k_end[:, None])
    return torch.where(inside, logits, -math.inf if clean_logits else math.nan)  # unclean: unspecified (NaN here)


def fp8_paged_mqa_logits_model(q, kv_cache, weights, context_lens, block_table, schedule_meta, max_context_len,
                               clean_logits=True):
    """``fp8_paged_mqa_logits`` with next_n = 1, 1-D context_lens: position p of
    sequence b is block block_table[b, p // 64] offset p % 64; only the blocks
    covering context_lens[b] are read. Past the context the logits are
    unspecified unless ``clean_logits`` (modelled as NaN: whatever was there)."""
    b, next_n, h, d = q.shape
    nb, bs, _, w = kv_cache.shape
    assert next_n == 1 and w == d + 4 and bs == PAGE and kv_cache.dtype == torch.uint8 and q.dtype == torch.float8_e4m3fn
    flat = kv_cache.reshape(nb, bs * w)
    keys = flat[:, : bs * d].contiguous().view(torch.float8_e4m3fn).reshape(nb, bs, d)
    scales = flat[:, bs * d:].contiguous().view(torch.float32).reshape(nb, bs)
    out = torch.full((b, max_context_len), -math.inf if clean_logits else math.nan, dtype=torch.float32)
    for i in range(b):
        n = int(context_lens[i])
        pos = torch.arange(n)
        blocks = block_table[i, pos // bs].long()
        out[i, :n] = _mqa(q[i], keys[blocks, pos % bs], scales[blocks, pos % bs], weights[i: i + 1])[0]
    return out


def _aligned_segments(m_indices: torch.Tensor) -> list[int]:
    """The contiguous layout's group of each row, with DeepGEMM's rule checked: every group's segment
    starts at a multiple of MK_ALIGNMENT."""
    idx = m_indices.tolist()
    for r in range(len(idx)):
        if idx[r] >= 0 and (r == 0 or idx[r - 1] != idx[r]):
            assert r % MK_ALIGNMENT == 0, f"segment of group {idx[r]} starts at row {r}, not aligned to {MK_ALIGNMENT}"
    return idx


def m_grouped_contiguous_model(a, b, d, m_indices):
    """``m_grouped_bf16_gemm_nt_contiguous``: rows of group g (a segment starting
    at a multiple of 128) get a @ b[g]^T; rows marked -1 are not written."""
    assert a.dtype == b.dtype == d.dtype == torch.bfloat16 and m_indices.dtype == torch.int32
    idx = _aligned_segments(m_indices)
    d.fill_(math.nan)  # unwritten memory: anything
    for g in sorted({x for x in idx if x >= 0}):
        rows = m_indices == g
        d[rows] = (a[rows].float() @ b[g].float().T).to(d.dtype)


def m_grouped_masked_model(a, b, d, masked_m, expected_m):
    """``m_grouped_bf16_gemm_nt_masked``: group g computes its first masked_m[g] rows; the rest are not written."""
    assert a.dtype == b.dtype == d.dtype == torch.bfloat16 and masked_m.dtype == torch.int32
    d.fill_(math.nan)
    for g in range(a.shape[0]):
        m = int(masked_m[g])
        d[g, :m] = (a[g, :m].float() @ b[g].float().T).to(d.dtype)


def _check_grouped_sfa(sf: torch.Tensor, g: int, mn: int, k: int) -> None:
    """check_sf_layout(sf, mn, k, 1, 128, num_groups=g, tma_stride_check=True)."""
    assert sf.dtype == torch.float32 and sf.shape == (g, mn, math.ceil(k / BLOCK)), f"sfa {tuple(sf.shape)}"
    assert sf.stride(-3) == sf.stride(-1) * sf.size(-1), "sfa groups must follow each other"
    assert sf.stride(-2) == 1 or mn == 1, "sfa must be MN-major"
    assert sf.stride(-1) >= tma_aligned(mn) and sf.stride(-1) % 4 == 0, f"sfa stride(-1) {sf.stride(-1)} not TMA-aligned"


def _check_grouped_sfb(sf: torch.Tensor, g: int, n: int, k: int) -> None:
    """check_sf_layout(sf, n, k, 128, 128, num_groups=g, sm90_sfb_check=True)."""
    assert sf.dtype == torch.float32 and sf.shape == (g, math.ceil(n / BLOCK), math.ceil(k / BLOCK)), f"sfb {tuple(sf.shape)}"
    assert sf.stride(-3) == sf.size(-2) * sf.size(-1), "sfb groups must follow each other"
    assert (sf.stride(-1) == 1 and sf.stride(-2) == sf.shape[-1]) or (sf.stride(-1) == sf.shape[-2] and sf.stride(-2) == 1)


def _block_scaled(a: torch.Tensor, sfa: torch.Tensor, b: torch.Tensor, sfb: torch.Tensor) -> torch.Tensor:
    """a @ b^T with every 128-wide K block promoted to fp32 and scaled by sfa[m, kb] * sfb[n // 128, kb]."""
    (m, k), n = a.shape, b.shape[0]
    part = torch.einsum("mkc,nkc->mnk", a.float().reshape(m, k // BLOCK, BLOCK), b.float().reshape(n, k // BLOCK, BLOCK))
    return (part * sfa[:, None, :] * sfb.repeat_interleave(BLOCK, 0)[:n][None, :, :]).sum(-1)


def m_grouped_fp8_contiguous_model(a_pair, b_pair, d, m_indices, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
    """``m_grouped_fp8_gemm_nt_contiguous``: rows of group g (a segment starting at a multiple of 128) get the
    block-scaled a @ b[g]^T; rows marked -1 are not written."""
    (a, sfa), (b, sfb) = a_pair, b_pair
    assert a.dtype == b.dtype == torch.float8_e4m3fn and a.stride(-1) == 1 and b.stride(-1) == 1, "NT: K-major e4m3 A and B"
    assert d.dtype == torch.bfloat16 and m_indices.dtype == torch.int32
    (m, k), (g, n) = a.shape, b.shape[:2]
    _check_sfa(sfa, m, k)
    _check_grouped_sfb(sfb, g, n, k)
    idx = _aligned_segments(m_indices)
    d.fill_(math.nan)  # unwritten memory: anything
    for grp in sorted({x for x in idx if x >= 0}):
        rows = m_indices == grp
        d[rows] = _block_scaled(a[rows], sfa[rows], b[grp], sfb[grp]).to(d.dtype)


def m_grouped_fp8_masked_model(a_pair, b_pair, d, masked_m, expected_m, recipe=None, compiled_dims="nk", disable_ue8m0_cast=False):
    """``m_grouped_fp8_gemm_nt_masked``: group g computes its first masked_m[g] rows; the rest are not written."""
    (a, sfa), (b, sfb) = a_pair, b_pair
    assert a.dtype == b.dtype == torch.float8_e4m3fn and a.stride(-1) == 1 and b.stride(-1) == 1, "NT: K-major e4m3 A and B"
    assert d.dtype == torch.bfloat16 and masked_m.dtype == torch.int32 and expected_m >= 1
    g, mm, k = a.shape
    _check_grouped_sfa(sfa, g, mm, k)
    _check_grouped_sfb(sfb, g, b.shape[1], k)
    d.fill_(math.nan)
    for grp in range(g):
        m = int(masked_m[grp])
        if m:
            d[grp, :m] = _block_scaled(a[grp, :m], sfa[grp, :m], b[grp], sfb[grp]).to(d.dtype)


def contract_ops() -> dict[str, Callable[..., Any]]:
    """The adapters with DeepGEMM replaced by its contract models."""
    return {"fp8_gemm": fp8_gemm_adapter(fp8_gemm_nt_model),
            "indexer_logits": mqa_logits_adapter(fp8_mqa_logits_model),
            "indexer_logits_paged": paged_mqa_logits_adapter(fp8_paged_mqa_logits_model, None),
            "moe_grouped_gemm_contiguous": contiguous_adapter(m_grouped_contiguous_model),
            "moe_grouped_gemm_masked": masked_adapter(m_grouped_masked_model),
            "moe_grouped_fp8_gemm_contiguous": fp8_contiguous_adapter(m_grouped_fp8_contiguous_model),
            "moe_grouped_fp8_gemm_masked": fp8_masked_adapter(m_grouped_fp8_masked_model)}
