"""Hand-checked facts about the norm, YaRN, RoPE and Hadamard references:
every expected value is computed here with math or a brute-force loop."""
import math

import pytest
import torch

import dsport
from named_errors import check_named_error

ref = dsport.resolve("reference")


# -- norms -------------------------------------------------------------------------
def test_rms_norm_by_hand():
    x = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([2.0, 0.5])
    y = ref.rms_norm(x, w, eps=0.0)
    rms = math.sqrt((9 + 16) / 2)
    assert y[0].tolist() == pytest.approx([2 * 3 / rms, 0.5 * 4 / rms], rel=1e-15)


def test_rms_norm_eps_enters_under_the_root():
    y = ref.rms_norm(torch.tensor([[1e-3, 1e-3]], dtype=torch.float64), torch.ones(2), eps=1e-6)
    assert y[0, 0].item() == pytest.approx(1e-3 / math.sqrt(1e-6 + 1e-6), rel=1e-14)


def test_rms_norm_with_residual_returns_the_sum():
    g = torch.Generator().manual_seed(1)
    x, res = torch.randn(3, 5, 64, generator=g).bfloat16(), torch.randn(3, 5, 64, generator=g).bfloat16()
    w = torch.rand(64, generator=g) + 0.5
    y, new_res = ref.rms_norm(x, w, residual=res)
    total = x.double() + res.double()
    assert torch.equal(new_res, total)
    row = total[1, 2].tolist()
    scale = 1 / math.sqrt(sum(v * v for v in row) / 64 + 1e-6)
    assert y[1, 2].tolist() == pytest.approx([wi * v * scale for wi, v in zip(w.tolist(), row)], rel=1e-12)


def test_rms_norm_zero_row_is_zero_and_nan_stays_in_its_row():
    x = torch.ones(3, 8)
    x[0] = 0.0
    x[2, 1] = float("nan")
    y = ref.rms_norm(x, torch.ones(8))
    assert torch.all(y[0] == 0) and torch.all(torch.isfinite(y[1])) and torch.all(torch.isnan(y[2]))


def test_layer_norm_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    w, b = torch.tensor([1.0, 2.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    y = ref.layer_norm(x, w, b)
    mean, var = 2.5, ((1.5 ** 2) * 2 + (0.5 ** 2) * 2) / 4  # biased variance: 1.25
    inv = 1 / math.sqrt(var + 1e-6)
    expect = [(v - mean) * inv * wi + bi for v, wi, bi in zip([1, 2, 3, 4], w.tolist(), b.tolist())]
    assert y[0].tolist() == pytest.approx(expect, rel=1e-14)


def test_layer_norm_constant_row_gives_the_bias():
    b = torch.arange(8.0)
    y = ref.layer_norm(torch.full((2, 8), 7.0), torch.rand(8), b)
    assert torch.equal(y, b.double().expand(2, 8))


# -- YaRN ----------------------------------------------------------------------------
THETA, DIM = 10000.0, 64


def _plain(i: int) -> float:
    return THETA ** (-2 * i / DIM)


def test_yarn_correction_range_is_10_to_23():
    corr = lambda r: DIM * math.log(4096 / (2 * math.pi * r)) / (2 * math.log(THETA))  # noqa: E731
    assert (math.floor(corr(32)), math.ceil(corr(1))) == (10, 23)


@pytest.mark.parametrize("i, expected", [
    (0, 1.0),                                                        # ramp 0: unscaled, theta^0
    (10, _plain(10)),                                                # ramp (10-10)/13 = 0
    (16, _plain(16) / 40 * (6 / 13) + _plain(16) * (7 / 13)),        # ramp 6/13: partly interpolated
    (23, _plain(23) / 40),                                           # ramp 1
    (31, THETA ** (-62 / 64) / 40),                                  # ramp 1
])
def test_yarn_table_at(i, expected):
    assert ref.yarn_freqs()[i].item() == pytest.approx(expected, rel=1e-12)


def test_yarn_ramp_shape():
    ratio = [f / _plain(i) for i, f in enumerate(ref.yarn_freqs().tolist())]
    assert ratio[:11] == pytest.approx([1.0] * 11, rel=1e-12)
    assert ratio[23:] == pytest.approx([1 / 40] * 9, rel=1e-12)
    assert all(a > b for a, b in zip(ratio[10:24], ratio[11:24]))  # strictly blended between low and high


def test_yarn_factor_one_is_plain_rope():
    f = ref.yarn_freqs(dim=128, factor=1.0)
    assert f.tolist() == pytest.approx([THETA ** (-2 * i / 128) for i in range(64)], rel=1e-12)


# -- RoPE ------------------------------------------------------------------------------
def test_rope_pairings_on_a_hand_made_vector():
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    pos, freqs = torch.tensor([3]), torch.tensor([0.5, 0.1], dtype=torch.float64)
    c0, s0, c1, s1 = math.cos(1.5), math.sin(1.5), math.cos(0.3), math.sin(0.3)
    inter = ref.rope(x, pos, freqs, interleaved=True)[0, 0].tolist()
    # interleaved: (x0, x1) by angle 1.5, (x2, x3) by angle 0.3
    assert inter == pytest.approx([1 * c0 - 2 * s0, 1 * s0 + 2 * c0, 3 * c1 - 4 * s1, 3 * s1 + 4 * c1], rel=1e-14)
    half = ref.rope(x, pos, freqs, interleaved=False)[0, 0].tolist()
    # rotate-half: (x0, x2) by angle 1.5, (x1, x3) by angle 0.3
    assert half == pytest.approx([1 * c0 - 3 * s0, 2 * c1 - 4 * s1, 1 * s0 + 3 * c0, 2 * s1 + 4 * c1], rel=1e-14)


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_preserves_norms_and_position_zero_is_identity(interleaved):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 64, generator=g, dtype=torch.float64)
    pos = torch.tensor([0, 1, 7, 4095, 4096, 163839])
    y = ref.rope(x, pos, ref.yarn_freqs(), interleaved=interleaved)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-13, atol=0)
    assert torch.equal(y[0], x[0])


@pytest.mark.parametrize("interleaved", [True, False])
def test_rope_dot_product_depends_only_on_relative_position(interleaved):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 64, generator=g, dtype=torch.float64), torch.randn(1, 1, 64, generator=g, dtype=torch.float64)
    f = ref.yarn_freqs()

    def score(m: int, n: int) -> float:
        return (ref.rope(q, torch.tensor([m]), f, interleaved) * ref.rope(k, torch.tensor([n]), f, interleaved)).sum().item()

    assert score(5, 2) == pytest.approx(score(1003, 1000), rel=1e-10)
    assert score(5, 2) != pytest.approx(score(5, 3), rel=1e-3)


# -- Hadamard -----------------------------------------------------------------------------
def test_hadamard_d2_and_d4_by_hand():
    a, b = 0.3, -1.7
    y = ref.hadamard(torch.tensor([a, b], dtype=torch.float64)).tolist()
    assert y == pytest.approx([(a + b) / math.sqrt(2), (a - b) / math.sqrt(2)], rel=1e-15)
    # H4 rows: ++++, +-+-, ++--, +--+ ; scale 1/2
    assert ref.hadamard(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == pytest.approx([5.0, -1.0, -2.0, 0.0], abs=1e-15)
    assert ref.hadamard(torch.tensor([[2.5]])).tolist() == [[2.5]]


def test_hadamard_is_orthonormal_with_pm_entries():
    h = ref.hadamard(torch.eye(128))
    torch.testing.assert_close(h @ h.T, torch.eye(128, dtype=torch.float64), rtol=0, atol=1e-14)
    assert torch.allclose(h.abs(), torch.full_like(h, 128 ** -0.5), rtol=1e-15, atol=0)


def test_hadamard_preserves_dot_products_and_spreads_an_outlier():
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(8, 128, generator=g), torch.randn(8, 128, generator=g)
    lhs = (ref.hadamard(q) * ref.hadamard(k)).sum(-1)
    torch.testing.assert_close(lhs, (q.double() * k.double()).sum(-1), rtol=1e-12, atol=1e-12)
    spike = torch.zeros(1, 128)
    spike[0, 17] = 1000.0
    assert torch.allclose(ref.hadamard(spike).abs(), torch.full((1, 128), 1000.0 / math.sqrt(128), dtype=torch.float64))


# -- validation errors name op and argument -----------------------------------------------------
F = torch.float32


@pytest.mark.parametrize("call, op, arg, fragment", [
    (lambda: ref.rms_norm(torch.randn(2, 8), torch.ones(7)), "rms_norm", "w", "shape"),
    (lambda: ref.rms_norm(torch.ones(2, 8, dtype=torch.int32), torch.ones(8)), "rms_norm", "x", "dtype"),
    (lambda: ref.rms_norm(torch.randn(2, 8), torch.ones(8), residual=torch.randn(3, 8)), "rms_norm", "residual", "batch dims"),
    (lambda: ref.rms_norm(torch.randn(2, 8), torch.ones(8), eps=-1.0), "rms_norm", "eps", ">= 0"),
    (lambda: ref.rms_norm(torch.randn(2, 8), torch.ones(8), eps=1), "rms_norm", "eps", "type float"),
    (lambda: ref.rms_norm(torch.randn(8), torch.ones(8)[None]), "rms_norm", "w", "rank 1"),
    (lambda: ref.layer_norm(torch.randn(2, 8), torch.ones(8), torch.zeros(4)), "layer_norm", "b", "shape"),
    (lambda: ref.layer_norm(torch.randn(2, 8), torch.ones(8)), "layer_norm", "(call)", "signature"),
    (lambda: ref.yarn_freqs(dim=63), "yarn_freqs", "dim", "even"),
    (lambda: ref.yarn_freqs(dim=1), "yarn_freqs", "dim", ">= 2"),
    (lambda: ref.yarn_freqs(beta_fast=1, beta_slow=32), "yarn_freqs", "beta_fast", "beta_fast > beta_slow > 0"),
    (lambda: ref.yarn_freqs(beta_slow=0), "yarn_freqs", "beta_fast", "beta_fast > beta_slow > 0"),
    (lambda: ref.yarn_freqs(factor=0.5), "yarn_freqs", "factor", ">= 1"),
    (lambda: ref.rope(torch.randn(2, 1, 5), torch.arange(2), torch.ones(2), True), "rope", "x", "even last dim"),
    (lambda: ref.rope(torch.randn(2, 1, 8), torch.arange(2), torch.ones(3), True), "rope", "freqs", "D // 2"),
    (lambda: ref.rope(torch.randn(2, 1, 8), torch.arange(2.0), torch.ones(4), True), "rope", "positions", "dtype"),
    (lambda: ref.rope(torch.randn(2, 8), torch.arange(2), torch.ones(4), True), "rope", "x", "rank 3"),
    (lambda: ref.rope(torch.randn(2, 1, 8), torch.arange(3), torch.ones(4), True), "rope", "positions", "T = 2"),
    (lambda: ref.rope(torch.randn(2, 1, 8), torch.arange(2), torch.ones(4)), "rope", "(call)", "interleaved"),
    (lambda: ref.rope(torch.randn(2, 1, 8), torch.arange(2), torch.ones(4), 1), "rope", "interleaved", "type bool"),
    (lambda: ref.hadamard(torch.randn(2, 96)), "hadamard", "x", "power-of-two"),
    (lambda: ref.hadamard(torch.randn(2, 0)), "hadamard", "x", "power-of-two"),
    (lambda: ref.hadamard(torch.ones(2, 4, dtype=torch.int64)), "hadamard", "x", "dtype"),
])
def test_error_names_op_and_argument(call, op, arg, fragment):
    check_named_error(call, op, arg, fragment)
