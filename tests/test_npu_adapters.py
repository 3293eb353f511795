"""The npu backend's adapters over contract models: ``contract`` through the
conformance worker, NPU-specific planted slips ``fail``, the fused indexer
equal to dsport's indexer + top-k, and the models refusing what the NPU
documents it refuses."""
import types

import pytest
import torch

from dsport.backends import reference
from dsport.conformance.runner import ConformancePlan, run_backend
from dsport.conformance.worker import run_case
from dsport.core.backend import from_module, import_backend
from dsport.npu_kernels import adapters, contract_models as M, layouts
from dsport.npu_kernels.ascend_checks import check_fused_indexer
from dsport.npu_kernels.contract_models import NpuContractError

PLANTED = "conformance_planted.npu_planted"
_KEEP: list = []  # modules stay alive: the worker caches contract tables by module id


def _backend(plant: str):
    import conformance_planted.npu_planted as planted

    mod = types.ModuleType(f"npu_planted_{plant or 'clean'}")
    ns = planted._layouts() if not plant else types.SimpleNamespace(**{**vars(planted._layouts()),
                                                                      planted._PLANTS[plant][0]: planted._PLANTS[plant][1]})
    mod.__dict__.update(NAME="npu_planted", OPS=adapters.make_ops(None), available=planted.available,
                        contract_ops=lambda: adapters.make_ops(M, ns))
    _KEEP.append(mod)
    return from_module(mod)


CASES = {
    "valid_first": [("sparse_mla_prefill", "S-lt-k"), ("sparse_mla_prefill", "causal-dense"), ("sparse_mla_decode", "S-lt-k")],
    "lse_log2": [("sparse_mla_prefill", "small"), ("sparse_mla_decode", "fp8-page64")],
    "rope_swap": [("sparse_mla_decode", "fp8-page64"), ("sparse_mla_decode", "fnuz-page64")],
}


@pytest.mark.parametrize("plant", sorted(CASES))
def test_planted_npu_slip_fails_where_the_clean_adapter_is_contract(plant):
    clean, buggy = _backend(""), _backend(plant)
    for op, case in CASES[plant]:
        assert run_case(clean, dict(reference.OPS), op, case, contract=True)["verdict"] == "contract", (op, case)
        row = run_case(buggy, dict(reference.OPS), op, case, contract=True)
        assert row["verdict"] == "fail", (plant, op, case, row["verdict"], row["reason"])


def test_npu_backend_runs_contract_in_the_conformance_worker():
    items = [("sparse_mla_prefill", "small"), ("sparse_mla_decode", "fp8-page64"), ("rms_norm", "residual"),
             ("sparse_mla_decode", "fp8-page1"), ("sparse_mla_prefill", "tiny"), ("indexer_logits", "tiny-fp8")]
    info, rows = run_backend("npu", "dsport.backends.npu", items, ConformancePlan(backends=["npu"]))
    assert info.available and "torch_npu is not installed" in info.reason and "contract models" in info.reason
    got = {(r["op"], r["case"]): (r["verdict"], r["reason"]) for r in rows}
    assert [got[i][0] for i in items[:3]] == ["contract"] * 3, got
    assert got[("sparse_mla_decode", "fp8-page1")] == ("unsupported", got[("sparse_mla_decode", "fp8-page1")][1])
    assert "page size 1" in got[("sparse_mla_decode", "fp8-page1")][1]
    # the declared limit, answered by refusal() before the call (not the adapter's NotImplementedError)
    assert got[("sparse_mla_prefill", "tiny")] == ("unsupported", "DQK = 80 not in [576]; d_v = 64 not in [512]")
    assert got[("indexer_logits", "tiny-fp8")][0] == "unsupported"
    assert "pass" not in {v for v, _ in got.values()}


def test_available_says_why_not_here():
    ok, why = import_backend("dsport.backends.npu").available()
    assert not ok and "torch_npu is not installed" in why


# -- the fused indexer + top-k ----------------------------------------------------------------------------------
def test_lightning_indexer_topk_selects_what_indexer_then_topk_select_does():
    # fp8 (both formats) and bf16; whole rows, right-down causal (one batch) and ragged ends (one batch per query)
    report = check_fused_indexer(M, "cpu")
    assert len(report["cases"]) == 5 and all(r["ok"] for r in report["cases"]), report
    assert {r["window"] for r in report["cases"]} == {"full", "causal", "ragged"}


def _indexer_inputs(gen, t, s, h, fmt):
    q = (torch.randn(t, h, 128, generator=gen) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
    k = (torch.randn(s, 128, generator=gen) * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
    w = torch.randn(t, h, generator=gen)
    return q, k, w, torch.zeros(t, dtype=torch.int32), torch.full((t,), s, dtype=torch.int32), torch.ones(s)


def test_fused_indexer_selection_is_checked_not_assumed():
    # the judge used above rejects a selection that is off by one position
    from dsport.backends import reference
    from dsport.conformance.metrics import topk as judge

    q, k, w, ks, ke, scale = _indexer_inputs(torch.Generator().manual_seed(9), 4, 60, 8, "e4m3fn")
    got = adapters.lightning_indexer_topk(M, q, k, w, ks, ke, 8, k_scale=scale)
    logits = reference.OPS["indexer_logits"](q=q, k=k, weights=w, ks=ks, ke=ke, k_scale=scale)
    want = reference.OPS["topk_select"](logits=logits, k=8, ks=ks, ke=ke)
    assert judge(got, want, logits, ks, ke).ok
    assert not judge((got + 1) % 60, want, logits, ks, ke).ok


def test_lightning_indexer_topk_refuses_what_the_npu_cannot_express():
    q, k, w, ks, ke, scale = _indexer_inputs(torch.Generator().manual_seed(8), 4, 40, 8, "e4m3fn")
    with pytest.raises(NotImplementedError, match="ks > 0"):
        adapters.lightning_indexer_topk(M, q, k, w, ks + 1, ke, 8, k_scale=scale)
    with pytest.raises(NotImplementedError, match="sparse_count 2500"):
        adapters.lightning_indexer_topk(M, q, k, w, ks, ke, 2500, k_scale=scale)
    q80 = torch.zeros(4, 80, 128, dtype=torch.bfloat16)
    with pytest.raises(NotImplementedError, match="at most 64 query heads"):
        adapters.lightning_indexer_topk(M, q80, k.bfloat16(), torch.zeros(4, 80), ks, ke, 8)


# -- the models enforce the documented constraints -------------------------------------------------------------
def _sfa_args(t=3, h=4, s=20, k=6):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(t, h, 576, generator=g).bfloat16()
    kv = torch.randn(s, 1, 576, generator=g).bfloat16()
    idx = torch.randint(0, s, (t, 1, k), generator=g).int()
    return q, kv, idx


def _sfa(q, kv, idx, **kw):
    t, s = q.shape[0], kv.shape[0]
    args = dict(actual_seq_lengths_query=torch.tensor([t], dtype=torch.int32),
                actual_seq_lengths_kv=torch.tensor([s], dtype=torch.int32),
                query_rope=q[..., 512:].contiguous(), key_rope=kv[..., 512:].contiguous(),
                layout_query="TND", layout_kv="TND", sparse_mode=0, attention_mode=2, return_softmax_lse=True)
    args.update(kw)
    return M.npu_sparse_flash_attention(q[..., :512].contiguous(), kv[..., :512].contiguous(), kv[..., :512].contiguous(),
                                        idx, 0.1, **args)


def test_sfa_model_refuses_documented_violations():
    q, kv, idx = _sfa_args()
    _sfa(q, kv, idx)  # the well-formed call runs
    with pytest.raises(NpuContractError, match="attention_mode"):
        _sfa(q, kv, idx, attention_mode=0)
    with pytest.raises(NpuContractError, match="not contiguous"):
        _sfa(q, kv, idx.transpose(0, 2).contiguous().transpose(0, 2))
    with pytest.raises(NpuContractError, match="rope"):
        _sfa(q, kv, idx, query_rope=None)
    q3 = torch.randn(3, 3, 576).bfloat16()
    with pytest.raises(NpuContractError, match="N1"):
        _sfa(q3, kv, idx)
    with pytest.raises(TypeError):  # the stale docstring's positional sparse_block_size: keyword-only in the schema
        M.npu_sparse_flash_attention(q[..., :512], kv[..., :512], kv[..., :512], idx, 0.1, 1)


def test_sfa_model_ends_a_row_at_its_first_sentinel():
    q, kv, idx = _sfa_args(t=1, k=6)
    idx[0, 0] = torch.tensor([3, 7, -1, 9, 11, 2], dtype=torch.int32)
    head = idx.clone()
    head[0, 0, 2:] = -1
    out, m, s = _sfa(q, kv, idx)
    out2, m2, s2 = _sfa(q, kv, head)
    assert torch.equal(out, out2) and torch.equal(m, m2) and torch.equal(s, s2)


def test_sfa_model_right_down_causal_crops_late_keys():
    q, kv, idx = _sfa_args(t=4, s=10, k=10)
    idx[:, 0] = torch.arange(10, dtype=torch.int32)
    out3, _, _ = _sfa(q, kv, idx, sparse_mode=3)
    for i in range(4):  # query i sees keys 0 .. i + 6
        row = idx.clone()
        row[:, 0, i + 7:] = -1
        ref, _, _ = _sfa(q, kv, row, sparse_mode=0)
        assert torch.equal(out3[i], ref[i])


def test_rope_pairing_slip_fails():
    # the indexer RoPE regression: rotate-half and interleaved pairings exchanged on the way to npu_rotary_mul
    swapped = types.SimpleNamespace(**M.MODELS)
    swapped.npu_rotary_mul = lambda x, r1, r2, rotary_mode="half", rotate=None: M.npu_rotary_mul(
        x, r1, r2, {"half": "interleave", "interleave": "half"}[rotary_mode], rotate)
    mod = types.ModuleType("npu_rope_swapped")
    mod.__dict__.update(OPS=adapters.make_ops(None), available=lambda: (False, "no NPU"),
                        contract_ops=lambda: adapters.make_ops(swapped))
    _KEEP.append(mod)
    buggy, clean = from_module(mod), _backend("")
    for case in ("indexer-q", "mla-k-pe"):
        assert run_case(clean, dict(reference.OPS), "rope", case, contract=True)["verdict"] == "contract"
        assert run_case(buggy, dict(reference.OPS), "rope", case, contract=True)["verdict"] == "fail"


def test_grouped_gemm_with_one_group_adds_an_empty_second():
    # the op refuses a group_list of length 1 (group_list_type 1); the adapter appends an empty group
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(5, 32, generator=g).bfloat16(), torch.randn(1, 16, 32, generator=g).bfloat16()
    with pytest.raises(NpuContractError, match="length not 1"):
        M.npu_grouped_matmul([a], [b.transpose(1, 2).contiguous()], group_list=torch.tensor([5]), split_item=3,
                             group_type=0, group_list_type=1)
    ids = torch.tensor([0, -1, 0, 0, -1], dtype=torch.int32)
    c = adapters.make_ops(M)["moe_grouped_gemm_contiguous"](a, b, ids)
    want = (a.float() @ b[0].float().T).bfloat16()
    assert torch.equal(c[ids >= 0], want[ids >= 0]) and not c[ids < 0].any()
