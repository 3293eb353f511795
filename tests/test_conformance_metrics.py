"""The metric families and the tolerance table, on hand-built tensors: each
check is shown to pass what is right and to fail what is wrong."""
import math

import pytest
import torch

from dsport.conformance import metrics as M
from dsport.conformance import tolerances as T
from dsport.conformance.tolerances import TABLE, row_for, tolerance


def test_every_tolerance_row_explains_itself_and_default_always_matches():
    assert all(r.why for r in TABLE)
    assert row_for("no_such_op", "-", "-").specificity() == 0
    assert row_for("sparse_mla_prefill", "bfloat16", "-").op == "sparse_mla_prefill"


def test_bf16_bound_by_hand_and_grows_with_reduction_length():
    t = tolerance("rms_norm", torch.bfloat16, torch.bfloat16, None, 128)
    # default bf16 row: 2 ulp of bf16 out + 2 ulp of bf16 intermediates + 1 * 2^-24 * sqrt(128)
    assert t.peak_rel == pytest.approx(2 * 2 ** -8 + 2 * 2 ** -8 + 2 ** -24 * math.sqrt(128))
    assert tolerance("rms_norm", torch.bfloat16, torch.bfloat16, None, 8192).peak_rel > t.peak_rel
    assert tolerance("rms_norm", torch.float32, torch.float32, None, 128).peak_rel < 1e-6
    assert t.cos_min == pytest.approx(1 - t.peak_rel ** 2)


TOL = tolerance("x", torch.float32, torch.float32, None, 64)


def test_close_passes_rounding_and_fails_one_bad_element():
    ref = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert M.close(ref.float(), ref, TOL).ok
    bad = ref.float().clone()
    bad[3, 4] += 0.01 * ref.abs().max()
    j = M.close(bad, ref, TOL)
    assert not j.ok and "peak-relative error" in j.reason and j.metrics["peak_rel_err"] == pytest.approx(0.01, rel=1e-3)


def test_close_demands_the_same_non_finite_values():
    ref = torch.tensor([1.0, float("nan"), float("inf"), 2.0], dtype=torch.float64)
    assert M.close(ref.clone(), ref, TOL).ok
    for got in ([1.0, 0.0, float("inf"), 2.0], [1.0, float("nan"), float("-inf"), 2.0], [1.0, float("nan"), float("inf"), float("nan")]):
        j = M.close(torch.tensor(got), ref, TOL)
        assert not j.ok and j.metrics["nonfinite_mismatch"] == 1


def test_exact_compares_bytes_and_reports_ratio():
    ref = torch.tensor([1.0, -2.0, 0.5, 4.0]).to(torch.float8_e4m3fn)
    assert M.exact(ref.clone(), ref).ok
    got = torch.tensor([1.0, -2.0, 1.0, 4.0]).to(torch.float8_e4m3fn)
    j = M.exact(got, ref)
    assert not j.ok and j.metrics["mismatches"] == 1 and j.metrics["median_ratio_at_mismatches"] == 2.0
    assert not M.exact(ref.view(torch.uint8), ref).ok  # a relabelled dtype is never equal


def test_topk_accepts_any_tied_choice_and_rejects_the_rest():
    logits = torch.tensor([[5.0, 3.0, 3.0, 1.0, 0.0]])
    ref = torch.tensor([[0, 1]], dtype=torch.int32)
    assert M.topk(torch.tensor([[2, 0]], dtype=torch.int32), ref, logits, None, None).ok  # the other 3.0: a tie
    wrong = M.topk(torch.tensor([[0, 3]], dtype=torch.int32), ref, logits, None, None)
    assert not wrong.ok and wrong.metrics["recall"] == 0.5
    dropped = M.topk(torch.tensor([[0, -1]], dtype=torch.int32), ref, logits, None, None)
    assert not dropped.ok and "padding count" in dropped.reason
    dup = M.topk(torch.tensor([[0, 0]], dtype=torch.int32), ref, logits, None, None)
    assert not dup.ok
    # outside [ks, ke): index 4 is not valid for ke = 4 even though the values would match a padded set
    ks, ke = torch.tensor([0], dtype=torch.int32), torch.tensor([4], dtype=torch.int32)
    assert not M.topk(torch.tensor([[0, 4]], dtype=torch.int32), ref, logits, ks, ke).ok


def test_log_scale_needs_minus_inf_exactly_where_the_reference_has_it():
    n = (576, 64)
    ref = torch.tensor([1.5, float("-inf"), 3.0], dtype=torch.float64)
    assert M.log_scale(ref.float(), ref, torch.bfloat16, n, "lse").ok
    assert not M.log_scale(torch.tensor([1.5, 0.0, 3.0]), ref, torch.bfloat16, n, "lse").ok
    assert not M.log_scale(torch.tensor([1.5, float("nan"), 3.0]), ref, torch.bfloat16, n, "lse").ok
    base2 = M.log_scale((ref / math.log(2)).float(), ref, torch.bfloat16, n, "lse")
    assert not base2.ok and "max |err|" in base2.reason


def test_log_scale_wants_nan_exactly_where_a_nan_input_put_it():
    ref = torch.tensor([1.5, float("nan"), 3.0], dtype=torch.float64)
    assert M.log_scale(ref.float(), ref, torch.bfloat16, (576, 64), "lse").ok
    hidden = M.log_scale(torch.tensor([1.5, float("-inf"), 3.0]), ref, torch.bfloat16, (576, 64), "lse")
    assert not hidden.ok and "NaN disagrees" in hidden.reason


def test_lse_bound_is_absolute_not_proportional_to_lse():
    """At lse = 10 an error of 0.16 (17 % in the split-KV combine weights) passed the old |lse|-relative
    bound; the absolute bound is about one bf16 rounding, and a bf16-rounded softmax denominator
    accumulated over 32 tiles (error ~ 32 * 2^-9) is far outside it."""
    ref = torch.full((4,), 10.0, dtype=torch.float64)
    assert not M.log_scale((ref + 0.16).float(), ref, torch.bfloat16, (576, 2048), "lse").ok
    assert not M.log_scale((ref + 0.02).float(), ref, torch.bfloat16, (576, 2048), "lse").ok
    assert M.log_scale((ref + 0.003).float(), ref, torch.bfloat16, (576, 2048), "lse").ok
    # the same error at lse = 100 is no more acceptable than at 10: the bound grows only by fp32 rounding
    big = ref * 10
    assert not M.log_scale((big + 0.02).float(), big, torch.bfloat16, (576, 2048), "lse").ok
    bound = T.log_scale_tolerance(torch.bfloat16, (576, 2048), 100.0)
    assert 2.0 ** -8 < bound.abs_err < 2.0 ** -8 + 1e-3 and bound.why


def test_routing_accepts_tied_experts_and_checks_weights():
    x = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[2.0, 0.0], [2.0, 0.0], [-1.0, 0.0], [0.5, 0.0]])  # experts 0 and 1 tie
    args = {"x": x, "weight": weight, "bias": None}
    t = tolerance("moe_gate", torch.float32, torch.float32, None, 2)
    rw, rids = torch.tensor([[0.6, 0.4]]), torch.tensor([[0, 3]], dtype=torch.int32)
    assert M.routing((rw, torch.tensor([[1, 3]], dtype=torch.int32)), (rw, rids), args, t).ok
    assert M.routing((rw.flip(-1), rids.flip(-1)), (rw, rids), args, t).ok  # order is not part of the contract
    j = M.routing((rw, torch.tensor([[0, 2]], dtype=torch.int32)), (rw, rids), args, t)
    assert not j.ok and j.metrics["tokens_misrouted"] == 1
    j = M.routing((torch.tensor([[0.5, 0.5]]), rids), (rw, rids), args, t)
    assert not j.ok and "weights" in j.reason


def test_rope_bound_grows_with_the_angle_and_attention_sums_both_reductions():
    u = 2.0 ** -24
    short = tolerance("rope", torch.float32, torch.float32, None, 1, max_angle=10.0)
    long = tolerance("rope", torch.float32, torch.float32, None, 1, max_angle=1.6e5)
    assert long.peak_rel - short.peak_rel == pytest.approx(2 * u * (1.6e5 - 10.0))
    row = row_for("sparse_mla_prefill", "float32", "-")
    assert row.reduction == ("DQK", "k")
    t = tolerance("sparse_mla_prefill", torch.float32, torch.float32, None, [576, 2048])
    assert t.peak_rel == pytest.approx(2 * u + 8 * u + u * (24 + math.sqrt(2048)))


def test_weighted_logit_size_never_exceeds_the_bound_from_lse():
    # the softmax-weighted mean |s| of a row is at most |lse| + 2 ln n, whatever the logits' scale and shift
    g = torch.Generator().manual_seed(0)
    for scale in (0.1, 1.0, 10.0, 100.0):
        for shift in (-50.0, 0.0, 50.0):
            s = torch.randn(64, 300, generator=g, dtype=torch.float64) * scale + shift
            weighted = (s.softmax(-1) * s.abs()).sum(-1)
            lse = s.logsumexp(-1)
            assert bool((weighted <= lse.abs() + 2 * math.log(300) + 1e-9).all())
            assert T.logit_size(lse, 300) >= float(weighted.max())
    assert T.logit_size(torch.tensor([-math.inf, 3.0, -2.0]), 1) == 3.0  # rows with no valid key do not count
    assert T.logit_size(torch.tensor([-math.inf]), 8) == 0.0


def test_exp_argument_rounding_widens_only_softmax_rows_by_the_logit_size():
    u = 2.0 ** -24
    big = tolerance("mla_decode_dense", torch.float32, torch.float32, None, [192, 128], logits=16.0)
    none = tolerance("mla_decode_dense", torch.float32, torch.float32, None, [192, 128])
    assert big.peak_rel - none.peak_rel == pytest.approx(2.0 * u * 16.0)  # two roundings of exp's argument
    assert tolerance("rms_norm", torch.float32, torch.float32, None, 64, logits=16.0).peak_rel == \
        tolerance("rms_norm", torch.float32, torch.float32, None, 64).peak_rel


def _exp2_attention(q, k, v, scale, round_argument=None):
    # an fp32 kernel's arithmetic: the scale folded with log2(e) into the logits, then exp2(s - max)
    t = (q @ k.T) * (scale * 1.4426950408889634)
    arg = t - t.max(-1, keepdim=True).values
    if round_argument is not None:
        arg = arg.to(round_argument).float()
    p = torch.exp2(arg)
    return (p @ v) / p.sum(-1, keepdim=True)


def test_an_fp32_exp2_softmax_with_large_logits_passes_and_a_bf16_exponent_does_not():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, 192, generator=g) * 3, torch.randn(512, 192, generator=g) * 3  # logits of size ~9
    v = torch.randn(512, 128, generator=g)
    scale = 192 ** -0.5
    s64 = (q.double() @ k.double().T) * scale
    ref = s64.softmax(-1) @ v.double()
    tol = tolerance("sparse_mla_prefill", torch.float32, torch.float32, None, [192, 512],
                    logits=T.logit_size(s64.logsumexp(-1), 512))
    assert M.close(_exp2_attention(q, k, v, scale), ref, tol).ok
    assert not M.close(_exp2_attention(q, k, v, scale, torch.bfloat16), ref, tol).ok
