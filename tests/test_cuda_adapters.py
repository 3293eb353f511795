"""FlashMLA and DeepGEMM adapters of the cuda backend, judged by the
conformance judge against contract models of each library (never the
library: verdict ``contract``), every convention mapping exercised, and
planted convention bugs that must come out ``fail``."""
import dataclasses
import math
import types

import pytest
import torch

from dsport.backends import reference
from dsport.backends.cuda import deepgemm as G
from dsport.backends.cuda import flashmla as F
from dsport.conformance.worker import run_case
from dsport.core.backend import from_module
from dsport.core.capabilities import capability_of
from dsport.core.spec import specs

# the adapters' declared limits (CAPABILITIES holds the own kernel's for the ops it serves): a planted,
# undecorated variant of an adapter is judged by the limits of the adapter it stands in for
CAPS = {op: capability_of(fn) for op, fn in __import__("dsport.backends.cuda", fromlist=["contract_ops"]).contract_ops().items()}


_ALIVE = []  # the worker caches contract tables by id(module): a collected module's id could come back


def _backend(ops: dict, name: str = "cuda_under_test"):
    m = types.ModuleType(name)
    _ALIVE.append(m)
    m.NAME, m.OPS, m.CAPABILITIES = name, {}, {op: CAPS[op] for op in ops}
    m.available = lambda: (False, "no vendor library here")
    m.contract_ops = lambda: ops
    return from_module(m)


def _verdicts(ops: dict, op: str, cases: list[str]) -> dict[str, str]:
    b = _backend(ops)
    rows = [run_case(b, dict(reference.OPS), op, c, contract=True) for c in cases]
    return {r["case"]: r["verdict"] + (f" ({r['reason']})" if r["verdict"] != "contract" else "") for r in rows}


PREFILL = ["rows-all-invalid", "all-invalid", "duplicates", "heads-8", "causal-dense"]
DECODE = ["fp8-page64", "fp8-page1", "rows-all-invalid", "heads-16", "mtp-sq2", "B0"]


@pytest.mark.parametrize("conv", [F.SEPT_2025, F.JAN_2026], ids=["2025-09", "2026-01"])
def test_flashmla_adapters_meet_the_spec_for_each_release(conv):
    ops = F.contract_ops(conv)
    assert set(_verdicts(ops, "sparse_mla_prefill", PREFILL).values()) == {"contract"}
    assert set(_verdicts(ops, "sparse_mla_decode", DECODE).values()) == {"contract"}


def test_release_conventions_differ_where_the_sources_say():
    case = next(c for c in specs()["sparse_mla_prefill"].cases() if c.id == "rows-all-invalid")
    a = case.inputs()
    q = torch.cat([a["q"], a["q"].new_zeros(a["q"].shape[0], 64 - a["q"].shape[1], a["q"].shape[2])], 1) if a["q"].shape[1] < 64 else a["q"]
    args = (q, a["kv"], a["indices"], a["sm_scale"], 512)
    _, mx_old, lse_old = F.sparse_fwd_model(F.SEPT_2025)(*args)
    _, mx_new, lse_new = F.sparse_fwd_model(F.JAN_2026)(*args)
    finite = torch.isfinite(lse_new)
    assert finite.any() and (~finite).any()
    assert torch.allclose(lse_old[finite] * math.log(2), lse_new[finite], atol=1e-5)  # base 2 then, natural now
    assert (lse_old[~finite] == -math.inf).all() and (lse_new[~finite] == math.inf).all()  # empty rows: -inf then, +inf now


def test_decode_reads_pages_whose_stride_exceeds_block_size_times_656():
    case = next(c for c in specs()["sparse_mla_decode"].cases() if c.id == "fp8-page64")
    a = case.inputs()
    nb, bs, one, w = a["kv_cache"].shape
    roomy = torch.full((nb, bs + 3, one, w), 0xFF, dtype=torch.uint8)  # page stride (bs + 3) * 656, tail is garbage
    roomy[:, :bs] = a["kv_cache"]
    padded = roomy[:, :bs]
    assert padded.stride(0) == (bs + 3) * 656 and padded.stride(1) == 656
    seen = {}

    def spy(q, k_cache, *rest, **kw):
        seen["ptr"], seen["stride0"] = k_cache.data_ptr(), k_cache.stride(0)
        return F.with_kvcache_model(F.JAN_2026)(q, k_cache, *rest, **kw)

    out, lse = F.decode_adapter(spy, F.JAN_2026)(**{**a, "kv_cache": padded})
    assert seen == {"ptr": padded.data_ptr(), "stride0": (bs + 3) * 656}  # passed through, not copied
    ref_out, ref_lse = reference.OPS["sparse_mla_decode"](**a)
    assert torch.allclose(out.double(), ref_out, atol=2e-2) and torch.allclose(lse.double(), ref_lse, atol=1e-4)


def test_decode_model_refuses_a_token_stride_other_than_656():
    case = next(c for c in specs()["sparse_mla_decode"].cases() if c.id == "fp8-page64")
    a = case.inputs()
    wide = torch.zeros(*a["kv_cache"].shape[:3], 672, dtype=torch.uint8)[..., :656]  # rows padded to 672 B
    wide.copy_(a["kv_cache"])
    q = torch.cat([a["q"], a["q"].new_zeros(*a["q"].shape[:2], 64 - a["q"].shape[2], 576)], 2)
    with pytest.raises(AssertionError, match="whole block must be contiguous"):
        F.with_kvcache_model(F.JAN_2026)(q, wide, None, None, 512, None, None, softmax_scale=0.1, is_fp8_kvcache=True,
                                         indices=a["indices"])
    out, _ = F.contract_ops()["sparse_mla_decode"](**{**a, "kv_cache": wide})  # the adapter makes the page contiguous first
    assert torch.allclose(out.double(), reference.OPS["sparse_mla_decode"](**a)[0], atol=2e-2)


def test_heads_are_padded_to_what_flashmla_runs():
    assert [F.padded_heads(h) for h in (8, 16, 32, 64, 100, 128)] == [64, 64, 64, 64, 128, 128]
    q = torch.zeros(2, 8, 576, dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="Unsupported h_q: 8"):
        F.sparse_fwd_model(F.JAN_2026)(q, torch.zeros(4, 1, 576, dtype=torch.bfloat16), torch.zeros(2, 1, 4, dtype=torch.int32), 0.1)
    with pytest.raises(NotImplementedError, match="more than 128"):
        F.padded_heads(129)


def test_flashmla_floors_the_scale_where_dsport_floors_the_amax():
    kv = torch.zeros(2, 576)
    kv[0, :128] = 1e-5 * torch.linspace(-1, 1, 128)  # amax 1e-5 < 1e-4 * 448: the two packers part
    kv[1] = torch.randn(576)
    ours, theirs = reference.OPS["mla_cache_pack"](kv, "e4m3fn"), F.flashmla_packer_model(kv)
    s_ours, s_theirs = ours[:, 512:528].contiguous().view(torch.float32), theirs[:, 512:528].contiguous().view(torch.float32)
    assert s_ours[0, 0] == 2.0 ** math.ceil(math.log2(1e-4 / 448)) and s_theirs[0, 0] == 2.0 ** math.ceil(math.log2(1e-4))
    assert torch.equal(ours[1], theirs[1])  # ordinary tiles: the same bytes
    # the decode path multiplies bytes by their own scale, so it reads either packer's rows exactly
    for cache in (ours, theirs):
        assert torch.equal(reference.OPS["mla_cache_unpack"](cache, "e4m3fn").double(),
                           __import__("dsport.backends.reference.mla_cache", fromlist=["unpack64"]).unpack64(cache).float().double())


def test_deepgemm_adapters_meet_the_spec():
    ops = G.contract_ops()
    want = {"fp8_gemm": ["tiny", "ragged-n", "M0"], "indexer_logits": ["tiny-fp8", "fp8-causal-prefix", "empty-windows", "T0"],
            "indexer_logits_paged": ["tiny", "page-size-64", "B0", "heads-8"],
            "moe_grouped_gemm_contiguous": ["tiny", "empty-group", "all-padding", "M0"],
            "moe_grouped_gemm_masked": ["tiny", "empty-groups", "all-zero", "G0"],
            "moe_grouped_fp8_gemm_contiguous": ["tiny", "poison-padding-nan", "ragged-n", "M0"],
            "moe_grouped_fp8_gemm_masked": ["tiny", "poison-empty-groups", "ragged-n", "G0"]}
    for op, cases in want.items():
        assert set(_verdicts(ops, op, cases).values()) == {"contract"}, op


def test_sfa_goes_mn_major_with_m_padded_to_4():
    sa = torch.arange(7 * 3, dtype=torch.float32).reshape(7, 3)
    mn = G.mn_major_tma_aligned(sa)
    assert torch.equal(mn, sa) and mn.stride() == (1, 8)
    a = torch.zeros(7, 384, dtype=torch.float8_e4m3fn)
    b = torch.zeros(128, 384, dtype=torch.float8_e4m3fn)
    d = torch.empty(7, 128, dtype=torch.bfloat16)
    with pytest.raises(AssertionError, match="MN-major"):
        G.fp8_gemm_nt_model((a, sa), (b, torch.ones(1, 3)), d)  # dsport's row-major sa, as is: refused
    G.fp8_gemm_nt_model((a, mn), (b, torch.ones(1, 3)), d)


def test_contiguous_segments_must_start_on_128_rows():
    a = torch.zeros(256, 32, dtype=torch.bfloat16)
    b = torch.zeros(2, 16, 32, dtype=torch.bfloat16)
    idx = torch.tensor([0] * 3 + [1] * 125 + [-1] * 128, dtype=torch.int32)
    with pytest.raises(AssertionError, match="not aligned to 128"):
        G.m_grouped_contiguous_model(a, b, torch.empty(256, 16, dtype=torch.bfloat16), idx)


# -- planted convention bugs: each must come out fail ------------------------------------
def test_planted_base2_lse_taken_as_natural_fails():
    # the Sept-2025 kernel (base-2 lse) wired with the 2026 conventions table: lse off by a factor ln 2
    ops = {"sparse_mla_prefill": F.prefill_adapter(F.sparse_fwd_model(F.SEPT_2025), F.JAN_2026)}
    got = _verdicts(ops, "sparse_mla_prefill", ["duplicates", "heads-8"])
    assert all(v.startswith("fail") for v in got.values()), got


def test_planted_empty_row_plus_inf_kept_fails():
    # the 2026 kernel (+inf lse on empty rows) wired with a table that expects -inf there: +inf leaks out
    wrong = dataclasses.replace(F.JAN_2026, prefill_empty_lse=-math.inf)
    ops = {"sparse_mla_prefill": F.prefill_adapter(F.sparse_fwd_model(F.JAN_2026), wrong)}
    got = _verdicts(ops, "sparse_mla_prefill", ["rows-all-invalid", "all-invalid"])
    assert all(v.startswith("fail") for v in got.values()), got
    assert _verdicts(ops, "sparse_mla_prefill", ["duplicates"]) == {"duplicates": "contract"}  # only empty rows differ


def test_planted_output_order_slip_fails():
    def unordered(q, kv, indices, sm_scale, d_v=512):  # FlashMLA's (out, max_logits, lse) handed on as is
        qp, h = F._pad_heads(q, 1)
        out, mx, lse = F.sparse_fwd_model(F.JAN_2026)(qp, kv, indices, sm_scale, d_v)
        return out[:, :h], mx[:, :h], lse[:, :h]
    got = _verdicts({"sparse_mla_prefill": unordered}, "sparse_mla_prefill", ["duplicates", "heads-8"])
    assert all(v.startswith("fail") for v in got.values()), got


def test_planted_unmasked_paged_tail_fails():
    def no_mask(q, k_cache, weights, block_table, seqlens):  # trusts clean_logits=False output past the context
        nb, bs, w = k_cache.shape
        return G.fp8_paged_mqa_logits_model(q.unsqueeze(1), k_cache.view(nb, bs, 1, w), weights.float(), seqlens, block_table,
                                            None, block_table.shape[1] * bs, clean_logits=False)
    got = _verdicts({"indexer_logits_paged": no_mask}, "indexer_logits_paged", ["tiny", "page-size-64"])
    assert all(v.startswith("fail") for v in got.values()), got


def test_planted_unzeroed_padding_rows_fail():
    def keep_padding(a, b, m_indices):
        d = torch.empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)
        G.m_grouped_contiguous_model(a, b, d, m_indices.int())
        return d
    got = _verdicts({"moe_grouped_gemm_contiguous": keep_padding}, "moe_grouped_gemm_contiguous", ["tiny", "all-padding"])
    assert all(v.startswith("fail") for v in got.values()), got


# -- FlashMLA and DeepGEMM as the serving engines package them ---------------------------------------------------
def _module(name, **attrs):
    m = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(m, k, v)
    _ALIVE.append(m)
    return m


def _engine_copy(name, conv, prefill_name="flash_mla_sparse_fwd", **extra):
    """A FlashMLA copy with the 2025-09 signatures of sgl-kernel and vLLM: get_mla_metadata(cache_seqlens,
    num_q_tokens_per_head_k, num_heads_k, num_heads_q, is_fp8_kvcache, topk) and descale_q/descale_k
    inserted before is_fp8_kvcache/indices in flash_mla_with_kvcache (sources in backends/cuda/flashmla.py)."""
    decode = F.with_kvcache_model(conv)

    def get_mla_metadata(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q=None, is_fp8_kvcache=False, topk=None):
        assert num_heads_k == 1 and is_fp8_kvcache and topk is not None and num_q_tokens_per_head_k % num_heads_q == 0
        return torch.zeros(8, dtype=torch.int32), torch.zeros(cache_seqlens.numel() + 1, dtype=torch.int32)

    def flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                               softmax_scale=None, causal=False, descale_q=None, descale_k=None, is_fp8_kvcache=False,
                               indices=None):
        assert descale_q is None and descale_k is None, "an argument meant for is_fp8_kvcache/indices landed in descale_*"
        return decode(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
                      softmax_scale=softmax_scale, causal=causal, is_fp8_kvcache=is_fp8_kvcache, indices=indices)

    return _module(name, get_mla_metadata=get_mla_metadata, flash_mla_with_kvcache=flash_mla_with_kvcache,
                   **{prefill_name: F.sparse_fwd_model(conv)}, **extra)


def _importer(mods):
    def import_module(name):
        if name not in mods:
            raise ModuleNotFoundError(f"No module named '{name}'")
        return mods[name]
    return import_module


def test_flashmla_is_found_in_the_first_copy_whose_kernels_load():
    not_built = _module("vllm.v1.attention.ops.flashmla", FlashMLASchedMeta=type("FlashMLASchedMeta", (), {}),
                        is_flashmla_sparse_supported=lambda: (False, "vllm._flashmla_C is not available"))
    failed_ext = _engine_copy("sgl_kernel.flash_mla", F.SEPT_2025, _flashmla_import_error=ImportError("CUDA Driver >= 12.4"))
    legacy = _engine_copy("vllm.attention.ops.flashmla", F.SEPT_2025, "flash_mla_sparse_prefill",
                          is_flashmla_supported=lambda: (True, None))
    mods = {m.__name__: m for m in (not_built, failed_ext, legacy)}
    lib, dist, why = F.find(_importer(mods))
    assert lib is legacy and dist.prefill == "flash_mla_sparse_prefill" and why == ""
    del mods[legacy.__name__]
    lib, dist, why = F.find(_importer(mods))
    assert lib is None and dist is None
    assert "No module named 'flash_mla'" in why and "flashmla_ops did not load" in why and "vllm._flashmla_C is not available" in why


@pytest.mark.parametrize("dist_index, prefill_name", [(1, "flash_mla_sparse_fwd"), (3, "flash_mla_sparse_prefill")],
                         ids=["sgl-kernel", "vllm-legacy"])
def test_engine_copies_of_flashmla_meet_the_spec(dist_index, prefill_name):
    dist = F.DISTRIBUTIONS[dist_index]
    lib = _engine_copy(dist.module, F.SEPT_2025, prefill_name)
    assert F.detect(lib) is F.SEPT_2025  # no FlashMLASchedMeta: the 2025-09 interface, base-2 prefill lse
    ops = F.vendor_ops(lib, dist)
    assert set(_verdicts(ops, "sparse_mla_prefill", PREFILL).values()) == {"contract"}
    assert set(_verdicts(ops, "sparse_mla_decode", DECODE).values()) == {"contract"}


def test_a_positional_call_past_the_seventh_argument_is_caught():
    # planted: is_fp8_kvcache passed positionally lands in sgl-kernel's descale_q
    lib = _engine_copy("sgl_kernel.flash_mla", F.SEPT_2025)
    with pytest.raises(AssertionError, match="descale"):
        lib.flash_mla_with_kvcache(None, None, None, None, 512, None, None, 0.1, False, True, None)


def test_legacy_deep_gemm_serves_the_fp8_gemm_under_its_old_name():
    def gemm_fp8_fp8_bf16_nt(lhs, rhs, out):  # the pre-refactor API: the same (fp8, scales) pairs
        G.fp8_gemm_nt_model(lhs, rhs, out)
    ops = G.vendor_ops(_module("deep_gemm", gemm_fp8_fp8_bf16_nt=gemm_fp8_fp8_bf16_nt))
    assert set(ops) == {"fp8_gemm"}  # the indexer logits and bf16 grouped GEMMs exist only in the new API
    cases = ["tiny", "ragged-n", "M0", "strided-views"]
    assert set(_verdicts(ops, "fp8_gemm", cases).values()) == {"contract"}


def test_grouped_fp8_sfa_goes_mn_major_per_group():
    sa = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)
    mn = G.mn_major_tma_aligned_groups(sa)
    assert torch.equal(mn, sa) and mn.stride() == (24, 1, 8)  # M 7 padded to 8; one group = 3 columns of 8


def test_planted_grouped_fp8_convention_bugs_fail():
    def row_major_sfa(a, sa, b, sb, masked_m):  # sa passed as dsport holds it: DeepGEMM's layout check refuses it
        d = torch.empty((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.bfloat16)
        G.m_grouped_fp8_masked_model((a.contiguous(), sa.float().contiguous()), (b.contiguous(), sb.float().contiguous()), d,
                                     masked_m.int(), 1)
        return d

    def keep_padding(a, sa, b, sb, m_indices):  # DeepGEMM leaves -1 rows unwritten: they must be zeroed
        d = torch.empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)
        G.m_grouped_fp8_contiguous_model((a, G.mn_major_tma_aligned(sa)), (b, sb.float().contiguous()), d, m_indices.int())
        return d

    got = _verdicts({"moe_grouped_fp8_gemm_masked": row_major_sfa}, "moe_grouped_fp8_gemm_masked", ["tiny", "full"])
    got.update(_verdicts({"moe_grouped_fp8_gemm_contiguous": keep_padding}, "moe_grouped_fp8_gemm_contiguous", ["tiny", "all-padding"]))
    assert all(v.startswith(("fail", "crash")) for v in got.values()), got
