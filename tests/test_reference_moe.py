"""Hand-checked MoE facts: routing built from chosen scores, experts against a
per-token loop, grouped GEMMs against per-group matmuls, and the layouts
composed back into moe_experts. Expected values are computed here, never by
the code under test."""
import math

import pytest
import torch

import dsport
from dsport.backends.reference.moe import contiguous_layout, masked_layout
from named_errors import check_named_error

ref = dsport.resolve("reference")
MOE_OPS = ("moe_gate", "moe_experts", "moe_grouped_gemm_contiguous", "moe_grouped_gemm_masked")


def gate_inputs(scores: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """x, weight with sigmoid(x W^T) = scores: W = I and x = logit(s)."""
    s = torch.tensor([scores], dtype=torch.float64)
    return torch.log(s / (1 - s)), torch.eye(len(scores), dtype=torch.float64)


def as_set(ids: torch.Tensor) -> set[int]:
    return set(ids.reshape(-1).tolist())


# -- moe_gate -------------------------------------------------------------------------------------

def test_bias_changes_the_selected_set_but_not_the_weights():
    s = [0.9 - 0.04 * e for e in range(16)]  # raw ranking: expert 0 best, 15 worst
    bias = torch.zeros(16, dtype=torch.float64)
    bias[[0, 1]] = -0.5   # biased: 0.40, 0.36 -> out
    bias[[14, 15]] = 0.5  # biased: 0.84, 0.80 -> in
    x, w = gate_inputs(s)
    weights, ids = ref.moe_gate(x, w, bias, n_group=1, topk_group=1, topk=8, route_scale=2.5)
    raw_top8 = set(range(8))
    expected = {2, 3, 4, 5, 6, 7, 14, 15}
    assert expected != raw_top8
    assert as_set(ids) == expected and ids.dtype == torch.int32
    # weights from the UNBIASED scores: s_e / (0.82+0.78+0.74+0.70+0.66+0.62+0.34+0.30) * 2.5
    total = 4.96
    got = dict(zip(ids[0].tolist(), weights[0].tolist()))
    for e in expected:
        assert got[e] == pytest.approx(s[e] / total * 2.5, rel=1e-12)
    assert got[14] == pytest.approx(0.34 / 4.96 * 2.5, rel=1e-12)
    assert weights.sum().item() == pytest.approx(2.5, rel=1e-12)


def group_scores() -> list[float]:
    # groups of 4: g0 holds the best expert (0.99) but its top-2 sum is 1.09;
    # g1 sums 0.61 + 0.60 = 1.21 and g2 sums 0.57 + 0.56 = 1.13, so g1 and g2 win
    return [0.99, 0.10, 0.09, 0.08,
            0.61, 0.60, 0.59, 0.58,
            0.57, 0.56, 0.55, 0.54,
            0.30, 0.20, 0.19, 0.18]


def test_group_limit_excludes_the_highest_scoring_expert():
    x, w = gate_inputs(group_scores())
    weights, ids = ref.moe_gate(x, w, torch.zeros(16, dtype=torch.float64), n_group=4, topk_group=2, topk=6, route_scale=1.0)
    assert as_set(ids) == {4, 5, 6, 7, 8, 9}  # expert 0 (0.99) is dropped with its group
    assert weights.sum().item() == pytest.approx(1.0, rel=1e-12)
    got = dict(zip(ids[0].tolist(), weights[0].tolist()))
    assert got[4] == pytest.approx(0.61 / (0.61 + 0.60 + 0.59 + 0.58 + 0.57 + 0.56), rel=1e-12)


def test_without_bias_a_group_scores_its_maximum():
    # same scores, bias None: group scores are the maxima 0.99, 0.61, 0.57, 0.30 -> g0 and g1 are kept
    x, w = gate_inputs(group_scores())
    _, ids = ref.moe_gate(x, w, None, n_group=4, topk_group=2, topk=6, route_scale=1.0)
    assert as_set(ids) == {0, 1, 4, 5, 6, 7}


def test_bias_can_move_a_group_in():
    # +0.4 on experts 12 and 13 lifts g3's top-2 sum to 0.70 + 0.60 = 1.30 > g1's 1.21 > g2's 1.13:
    # g3 and g1 are kept. Biased candidates 0.70 (12), 0.61 (4), 0.60 (5), 0.60 (13), then 0.59 (6)
    x, w = gate_inputs(group_scores())
    bias = torch.zeros(16, dtype=torch.float64)
    bias[[12, 13]] = 0.4
    weights, ids = ref.moe_gate(x, w, bias, n_group=4, topk_group=2, topk=4, route_scale=1.0)
    assert as_set(ids) == {12, 4, 5, 13}
    got = dict(zip(ids[0].tolist(), weights[0].tolist()))
    assert got[12] == pytest.approx(0.30 / (0.30 + 0.61 + 0.60 + 0.20), rel=1e-12)  # unbiased s of 12 is 0.30


def test_softmax_weights_are_not_renormalised():
    p = [0.4, 0.3, 0.2, 0.1]
    x = torch.log(torch.tensor([p], dtype=torch.float64))  # softmax(log p) = p since sum p = 1
    weights, ids = ref.moe_gate(x, torch.eye(4, dtype=torch.float64), None, n_group=1, topk_group=1, topk=2,
                                route_scale=2.0, score_func="softmax")
    assert as_set(ids) == {0, 1}
    assert sorted(weights[0].tolist()) == pytest.approx([0.6, 0.8], rel=1e-12)  # 0.3*2, 0.4*2: sum 1.4, not 2.0


def test_gate_computes_sigmoid_of_x_wT():
    # two experts, D = 2: logits are x . W_e, chosen by hand
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=torch.float64)  # logits -1.5 and 2.5
    weights, ids = ref.moe_gate(x, w, None, n_group=1, topk_group=1, topk=1, route_scale=3.0)
    assert ids.tolist() == [[1]] and weights.item() == pytest.approx(3.0, rel=1e-12)
    s = [1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(-2.5))]
    weights, _ = ref.moe_gate(x, w, None, n_group=1, topk_group=1, topk=2, route_scale=1.0)
    assert sorted(weights[0].tolist()) == pytest.approx(sorted(v / sum(s) for v in s), rel=1e-12)


def test_tied_scores_give_distinct_experts_and_equal_weights():
    x, w = gate_inputs([0.5] * 16)
    weights, ids = ref.moe_gate(x, w, torch.zeros(16, dtype=torch.float64), n_group=4, topk_group=2, topk=8)
    assert len(as_set(ids)) == 8
    groups = {e // 4 for e in as_set(ids)}
    assert len(groups) == 2  # 8 experts from exactly the 2 kept groups
    assert torch.allclose(weights, torch.full_like(weights, 2.5 / 8), rtol=0, atol=1e-15)


def test_deepseek_routing_properties():
    case = next(c for c in dsport.get_spec("moe_gate").cases() if c.id == "ds-routing")
    args = case.inputs()
    weights, ids = ref.moe_gate(**args)
    assert ids.shape == (32, 8)
    for row in ids.tolist():
        assert len(set(row)) == 8 and len({e // 32 for e in row}) <= 4  # at most 4 of the 8 groups of 32
    torch.testing.assert_close(weights.sum(-1), torch.full((32,), 2.5, dtype=torch.float64), rtol=1e-12, atol=0)
    # brute force per token: best 4 groups by top-2 biased sum, then top 8 biased among them
    s_all = torch.sigmoid(args["x"].double() @ args["weight"].double().T)
    b_all = (s_all + args["bias"].double()).tolist()
    for t, (s, b) in enumerate(zip(s_all.tolist(), b_all)):
        gsum = [sum(sorted(b[g * 32:(g + 1) * 32])[-2:]) for g in range(8)]
        kept = sorted(range(8), key=lambda g: -gsum[g])[:4]
        cand = [e for g in kept for e in range(g * 32, (g + 1) * 32)]
        best = sorted(cand, key=lambda e: -b[e])[:8]
        assert set(ids[t].tolist()) == set(best)
        sel = [s[e] for e in ids[t].tolist()]
        assert weights[t].tolist() == pytest.approx([v / sum(sel) * 2.5 for v in sel], rel=1e-12)


def test_gate_T0():
    weights, ids = ref.moe_gate(torch.empty(0, 64), torch.randn(256, 64), torch.zeros(256))
    assert weights.shape == (0, 8) and ids.shape == (0, 8) and ids.dtype == torch.int32


# -- moe_experts ----------------------------------------------------------------------------------

def per_token_loop(x, ids, weights, w1, w3, w2):
    """y[t] = sum_j weights[t, j] * w2 (silu(w1 x) * (w3 x)), token by token, slot by slot."""
    x, w1, w3, w2 = x.double(), w1.double(), w3.double(), w2.double()
    y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e < 0:
                continue
            g, u = w1[e] @ x[t], w3[e] @ x[t]
            h = g / (1 + torch.exp(-g)) * u
            y[t] += float(weights[t, j]) * (w2[e] @ h)
    return y


def test_one_expert_by_hand():
    # D = I = 1: y = w * c * silu(a x) * (b x) with a = 2, b = 3, c = 0.5, x = 1.5, w = 0.25
    x = torch.tensor([[1.5]], dtype=torch.float64)
    one = lambda v: torch.tensor([[[v]]], dtype=torch.float64)
    y = ref.moe_experts(x, torch.tensor([[0]], dtype=torch.int32), torch.tensor([[0.25]]), one(2.0), one(3.0), one(0.5))
    silu = 3.0 / (1 + math.exp(-3.0))
    assert y.item() == pytest.approx(0.25 * 0.5 * silu * 4.5, rel=1e-12)


@pytest.mark.parametrize("case_id", ["tiny", "T0", "T1", "empty-expert", "one-expert", "duplicate-ids", "ep-minus1",
                                     "ep-minus1-nan-weights", "all-minus1", "non-contiguous", "ds-routing"])
def test_experts_equal_per_token_loop(case_id):
    case = next(c for c in dsport.get_spec("moe_experts").cases() if c.id == case_id)
    args = case.inputs()
    y = ref.moe_experts(**args)
    assert y.dtype == torch.float64 and torch.isfinite(y).all()
    torch.testing.assert_close(y, per_token_loop(**args), rtol=1e-12, atol=1e-12)


def test_case_edges_hold_what_their_names_say():
    cases = {c.id: c.inputs() for c in dsport.get_spec("moe_experts").cases() if "edge" in c.tags}
    assert cases["T0"]["x"].shape[0] == 0
    assert 3 not in as_set(cases["empty-expert"]["ids"])
    assert as_set(cases["one-expert"]["ids"]) == {5}
    assert -1 in as_set(cases["ep-minus1"]["ids"]) and len(as_set(cases["ep-minus1"]["ids"])) > 2
    assert not cases["non-contiguous"]["x"].is_contiguous()
    assert torch.isnan(cases["ep-minus1-nan-weights"]["weights"]).any()


def test_all_ids_minus1_gives_zero():
    y = ref.moe_experts(torch.randn(3, 8), torch.full((3, 2), -1, dtype=torch.int32), torch.ones(3, 2),
                        torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 8, 4))
    assert torch.all(y == 0)


# -- grouped GEMMs --------------------------------------------------------------------------------

@pytest.mark.parametrize("case_id", ["tiny", "M0", "empty-group", "one-group-no-padding", "all-padding", "non-contiguous", "ds-ep32"])
def test_contiguous_equals_per_group_matmuls(case_id):
    case = next(c for c in dsport.get_spec("moe_grouped_gemm_contiguous").cases() if c.id == case_id)
    a, b, m_idx = case.inputs().values()
    c = ref.moe_grouped_gemm_contiguous(a, b, m_idx)
    assert c.shape == (a.shape[0], b.shape[1])
    pad = m_idx < 0
    assert torch.all(c[pad] == 0)
    if case_id not in ("M0", "all-padding"):
        assert pad.any() or case_id == "one-group-no-padding"
        assert a[pad].abs().sum() > 0 or not pad.any()  # padding rows are not zero in the input
    for g in range(b.shape[0]):
        rows = m_idx == g
        torch.testing.assert_close(c[rows], a[rows].double() @ b[g].double().T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case_id", ["tiny", "empty-groups", "all-zero", "full", "G0", "non-contiguous", "ds-decode"])
def test_masked_equals_per_group_matmuls(case_id):
    case = next(c for c in dsport.get_spec("moe_grouped_gemm_masked").cases() if c.id == case_id)
    a, b, masked_m = case.inputs().values()
    c = ref.moe_grouped_gemm_masked(a, b, masked_m)
    assert c.shape == (a.shape[0], a.shape[1], b.shape[1])
    for g, m in enumerate(masked_m.tolist()):
        torch.testing.assert_close(c[g, :m], a[g, :m].double() @ b[g].double().T, rtol=1e-12, atol=1e-12)
        assert torch.all(c[g, m:] == 0)
        assert m == a.shape[1] or a[g, m:].abs().sum() > 0  # the unused rows carry garbage


def test_contiguous_by_hand():
    a = torch.zeros(128, 2, dtype=torch.float64)
    a[0], a[1], a[2] = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), torch.tensor([5.0, 6.0])
    b = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)  # group 0 picks column 0, group 1 column 1
    m_idx = torch.full((128,), -1, dtype=torch.int32)
    m_idx[0], m_idx[1], m_idx[2] = 1, 1, -1
    c = ref.moe_grouped_gemm_contiguous(a, b, m_idx)
    assert c[:3, 0].tolist() == [2.0, 4.0, 0.0]


# -- layouts --------------------------------------------------------------------------------------

IDS = torch.tensor([[1, 0], [1, -1], [2, 1]], dtype=torch.int32)  # flat slots 0..5; slot 3 is remote


def test_contiguous_layout_by_hand():
    slots, m_idx = contiguous_layout(IDS, n_experts=4, align=4)
    # expert 0: slot 1; expert 1: slots 0, 2, 5; expert 2: slot 4; expert 3: nothing; each run padded to 4
    assert slots.tolist() == [1, -1, -1, -1, 0, 2, 5, -1, 4, -1, -1, -1]
    assert m_idx.tolist() == [0, -1, -1, -1, 1, 1, 1, -1, 2, -1, -1, -1] and m_idx.dtype == torch.int32


def test_masked_layout_by_hand():
    slots, masked_m = masked_layout(IDS, n_experts=4, m_max=3)
    assert slots.tolist() == [[1, -1, -1], [0, 2, 5], [4, -1, -1], [-1, -1, -1]]
    assert masked_m.tolist() == [1, 3, 1, 0] and masked_m.dtype == torch.int32


def test_layouts_of_no_tokens():
    empty = torch.empty(0, 8, dtype=torch.int32)
    slots, m_idx = contiguous_layout(empty, 16)
    assert slots.numel() == 0 and m_idx.numel() == 0
    slots, masked_m = masked_layout(empty, 16, 4)
    assert slots.shape == (16, 4) and torch.all(slots == -1) and torch.all(masked_m == 0)


def swiglu_through(gemm, a_rows, args):
    """One expert MLP over laid-out rows with the grouped GEMM under test."""
    h = torch.nn.functional.silu(gemm(a_rows, args["w1"])) * gemm(a_rows, args["w3"])
    return gemm(h, args["w2"])


@pytest.mark.parametrize("case_id", ["tiny", "empty-expert", "one-expert", "duplicate-ids", "ep-minus1", "ds-routing"])
def test_contiguous_layout_composes_to_moe_experts(case_id):
    args = next(c for c in dsport.get_spec("moe_experts").cases() if c.id == case_id).inputs()
    ids, k = args["ids"], args["ids"].shape[1]
    slots, m_idx = contiguous_layout(ids, args["w1"].shape[0])
    valid = slots >= 0
    tok = torch.where(valid, slots // k, 0)
    a = torch.where(valid.unsqueeze(1), args["x"].double()[tok], 0.0)
    out = swiglu_through(lambda a_, w: ref.moe_grouped_gemm_contiguous(a_, w.double(), m_idx), a, args)
    y = torch.zeros(args["x"].shape, dtype=torch.float64)
    y.index_add_(0, tok[valid], out[valid] * args["weights"].reshape(-1)[slots[valid]].double().unsqueeze(1))
    torch.testing.assert_close(y, ref.moe_experts(**args), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case_id", ["tiny", "empty-expert", "one-expert", "duplicate-ids", "ep-minus1", "ds-routing"])
def test_masked_layout_composes_to_moe_experts(case_id):
    args = next(c for c in dsport.get_spec("moe_experts").cases() if c.id == case_id).inputs()
    ids, k = args["ids"], args["ids"].shape[1]
    busiest = int(torch.bincount(ids[ids >= 0].long()).max()) if (ids >= 0).any() else 0
    slots, masked_m = masked_layout(ids, args["w1"].shape[0], m_max=busiest)
    valid = slots >= 0
    tok = torch.where(valid, slots // k, 0)
    a = torch.where(valid.unsqueeze(-1), args["x"].double()[tok], 0.0)  # [G, M_max, D]
    out = swiglu_through(lambda a_, w: ref.moe_grouped_gemm_masked(a_, w.double(), masked_m), a, args)
    y = torch.zeros(args["x"].shape, dtype=torch.float64)
    y.index_add_(0, tok[valid], out[valid] * args["weights"].reshape(-1)[slots[valid]].double().unsqueeze(1))
    torch.testing.assert_close(y, ref.moe_experts(**args), rtol=1e-12, atol=1e-12)


# -- validation -----------------------------------------------------------------------------------

def _gate(**kw):
    args = {"x": torch.randn(2, 16), "weight": torch.randn(16, 16), "bias": torch.zeros(16), "n_group": 4,
            "topk_group": 2, "topk": 4}
    return lambda: ref.moe_gate(**{**args, **kw})


def _experts(**kw):
    args = {"x": torch.randn(2, 8), "ids": torch.zeros(2, 2, dtype=torch.int32), "weights": torch.ones(2, 2),
            "w1": torch.randn(3, 4, 8), "w3": torch.randn(3, 4, 8), "w2": torch.randn(3, 8, 4)}
    return lambda: ref.moe_experts(**{**args, **kw})


def _contig(**kw):
    args = {"a": torch.randn(128, 8), "b": torch.randn(2, 4, 8), "m_indices": torch.zeros(128, dtype=torch.int32)}
    return lambda: ref.moe_grouped_gemm_contiguous(**{**args, **kw})


def _masked(**kw):
    args = {"a": torch.randn(2, 4, 8), "b": torch.randn(2, 3, 8), "masked_m": torch.tensor([1, 4], dtype=torch.int32)}
    return lambda: ref.moe_grouped_gemm_masked(**{**args, **kw})


def _mixed_tile():
    m = torch.zeros(256, dtype=torch.int32)
    m[100:128] = 1  # group 1 starts inside group 0's tile
    return m


@pytest.mark.parametrize("call, op, arg, fragment", [
    (_gate(n_group=3), "moe_gate", "n_group", "E divisible by n_group"),
    (_gate(n_group=16, topk_group=4), "moe_gate", "n_group", "at least 2 experts per group"),
    (_gate(topk_group=5), "moe_gate", "topk_group", "topk_group <= n_group"),
    (_gate(topk=9), "moe_gate", "topk", "topk <= topk_group * E / n_group"),
    (_gate(topk=0), "moe_gate", "topk", ">= 1"),
    (_gate(weight=torch.randn(16, 8)), "moe_gate", "weight", "D = 16"),
    (_gate(bias=torch.zeros(8)), "moe_gate", "bias", "E = 16"),
    (_gate(x=torch.randn(2, 16).int()), "moe_gate", "x", "dtype"),
    (_gate(score_func="sqrtsoftplus"), "moe_gate", "score_func", "sigmoid"),
    (_gate(route_scale="2.5"), "moe_gate", "route_scale", "type"),
    (_experts(ids=torch.tensor([[0, 3], [1, 2]], dtype=torch.int32)), "moe_experts", "ids", "expert id in [0, E)"),
    (_experts(ids=torch.tensor([[0, -2], [1, 2]], dtype=torch.int32)), "moe_experts", "ids", "-1"),
    (_experts(ids=torch.zeros(2, 2, dtype=torch.int64)), "moe_experts", "ids", "dtype"),
    (_experts(weights=torch.ones(2, 3)), "moe_experts", "weights", "K = 2"),
    (_experts(w3=torch.randn(3, 5, 8)), "moe_experts", "w3", "I = 4"),
    (_experts(w2=torch.randn(3, 4, 4)), "moe_experts", "w2", "D = 8"),
    (_experts(w1=torch.randn(2, 4, 8)), "moe_experts", "w3", "E = 2"),
    (_experts(w1=torch.randn(3, 4, 8).double()), "moe_experts", "w1", "same dtype as 'x'"),
    (_contig(a=torch.randn(100, 8), m_indices=torch.zeros(100, dtype=torch.int32)), "moe_grouped_gemm_contiguous", "a", "M divisible by 128"),
    (_contig(m_indices=torch.full((128,), 2, dtype=torch.int32)), "moe_grouped_gemm_contiguous", "m_indices", "[0, G)"),
    (_contig(m_indices=torch.zeros(64, dtype=torch.int32)), "moe_grouped_gemm_contiguous", "m_indices", "M = 128"),
    (_contig(m_indices=torch.zeros(128, dtype=torch.int64)), "moe_grouped_gemm_contiguous", "m_indices", "dtype"),
    (_contig(b=torch.randn(2, 4, 16)), "moe_grouped_gemm_contiguous", "b", "K = 8"),
    (_contig(b=torch.randn(2, 4, 8).bfloat16()), "moe_grouped_gemm_contiguous", "b", "same dtype as 'a'"),
    (_contig(a=torch.randn(256, 8), m_indices=_mixed_tile()), "moe_grouped_gemm_contiguous", "m_indices", "one group per 128-row tile"),
    (_masked(masked_m=torch.tensor([1, 5], dtype=torch.int32)), "moe_grouped_gemm_masked", "masked_m", "masked_m[g] <= MM"),
    (_masked(masked_m=torch.tensor([-1, 2], dtype=torch.int32)), "moe_grouped_gemm_masked", "masked_m", "0 <= masked_m[g]"),
    (_masked(masked_m=torch.tensor([1, 2, 3], dtype=torch.int32)), "moe_grouped_gemm_masked", "masked_m", "G = 2"),
    (_masked(masked_m=torch.tensor([1, 2])), "moe_grouped_gemm_masked", "masked_m", "dtype"),
    (_masked(b=torch.randn(3, 3, 8)), "moe_grouped_gemm_masked", "b", "G = 2"),
    (_masked(b=torch.randn(2, 3, 8).half()), "moe_grouped_gemm_masked", "b", "same dtype as 'a'"),
    (lambda: contiguous_layout(torch.tensor([[0, 4]]), 4), "contiguous_layout", "ids", "[0, 4)"),
    (lambda: contiguous_layout(torch.tensor([0, 1]), 4), "contiguous_layout", "ids", "[T, K]"),
    (lambda: contiguous_layout(torch.tensor([[0, 1]]), 4, align=0), "contiguous_layout", "align", ">= 1"),
    (lambda: masked_layout(torch.tensor([[0, -3]]), 4, 2), "masked_layout", "ids", "-1 or an expert id"),
    (lambda: masked_layout(torch.tensor([[1], [1], [1]]), 4, 2), "masked_layout", "m_max", "expert 1 has 3 rows"),
])
def test_error_names_op_and_argument(call, op, arg, fragment):
    check_named_error(call, op, arg, fragment)


def test_every_quick_case_validates_and_every_tag_is_used():
    for op in MOE_OPS:
        spec = dsport.get_spec(op)
        cases = spec.cases()
        for case in cases:
            if "quick" in case.tags:
                spec.validate(spec.bind(**case.inputs()))
        assert {"quick", "full", "tiny", "edge", "deepseek"} <= set().union(*(c.tags for c in cases)), op
        assert all("full" in c.tags for c in cases), op


# -- grouped FP8 GEMMs ----------------------------------------------------------------------------

def _dequant_rows(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """[..., K] fp8 codes times one scale per 128 values, float64, written out here."""
    return q.double() * s.double().repeat_interleave(128, dim=-1)


def _dequant_weight(w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    n = w.shape[0]
    return w.double() * s.double().repeat_interleave(128, 0)[:n].repeat_interleave(128, 1)


def _fp8(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_grouped_fp8_contiguous_is_a_dequantized_matmul_per_group_and_skips_padding(impl):
    gen = torch.Generator().manual_seed(11)
    g, n, k = 3, 200, 256
    m_indices = torch.cat([torch.full((5,), 2), torch.full((123,), -1), torch.full((128,), 0)]).int()
    a, sa = _fp8(gen, 256, k), torch.exp2(torch.randint(-6, 2, (256, k // 128), generator=gen).float())
    b, sb = _fp8(gen, g, n, k), torch.rand(g, 2, k // 128, generator=gen) * 1e-3 + 1e-4
    a.view(torch.uint8)[5:128] = 0xFF  # padding rows: NaN codes, never read
    b.view(torch.uint8)[1] = 0xFF      # group 1 has no row: never read
    c = dsport.resolve(impl).moe_grouped_fp8_gemm_contiguous(a, sa, b, sb, m_indices).double()
    want = torch.zeros(256, n, dtype=torch.float64)
    for rows, grp in ((slice(0, 5), 2), (slice(128, 256), 0)):
        want[rows] = _dequant_rows(a[rows], sa[rows]) @ _dequant_weight(b[grp], sb[grp]).T
    tol = 1e-12 if impl == "reference" else 2 ** -8  # torch: bf16 out
    assert torch.isfinite(c).all()
    assert (c - want).abs().max() <= tol * want.abs().max()


@pytest.mark.parametrize("impl", ["reference", "torch"])
def test_grouped_fp8_masked_computes_only_counted_rows(impl):
    gen = torch.Generator().manual_seed(12)
    g, mm, n, k = 3, 6, 128, 128
    a, sa = _fp8(gen, g, mm, k), torch.exp2(torch.randint(-6, 2, (g, mm, 1), generator=gen).float())
    b, sb = _fp8(gen, g, n, k), torch.rand(g, 1, 1, generator=gen) * 1e-3 + 1e-4
    masked_m = torch.tensor([2, 0, 6], dtype=torch.int32)
    a.view(torch.uint8)[0, 2:] = 0xFF
    b.view(torch.uint8)[1] = 0xFF
    c = dsport.resolve(impl).moe_grouped_fp8_gemm_masked(a, sa, b, sb, masked_m).double()
    want = torch.zeros(g, mm, n, dtype=torch.float64)
    for grp, m in ((0, 2), (2, 6)):
        want[grp, :m] = _dequant_rows(a[grp, :m], sa[grp, :m]) @ _dequant_weight(b[grp], sb[grp]).T
    tol = 1e-12 if impl == "reference" else 2 ** -8
    assert torch.isfinite(c).all()
    assert (c - want).abs().max() <= tol * want.abs().max()


def test_grouped_fp8_rejects_mismatched_scales_by_name():
    gen = torch.Generator().manual_seed(13)
    a, sa = _fp8(gen, 128, 256), torch.ones(128, 2)
    b, sb = _fp8(gen, 2, 128, 256), torch.ones(2, 1, 1)  # K / 128 = 2 scale columns expected
    check_named_error(lambda: ref.moe_grouped_fp8_gemm_contiguous(a, sa, b, sb, torch.zeros(128, dtype=torch.int32)),
                      "moe_grouped_fp8_gemm_contiguous", "sb", "K // 128")
