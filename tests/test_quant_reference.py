"""Hand-checked FP8 quantization facts, computed independently of the code."""
import pytest
import torch

import dsport
from dsport.core.fp8 import E4M3FN, E4M3FNUZ, UE8M0, pow2_ceil

ref = dsport.resolve("reference")


def test_ue8m0_scale_rounds_up_to_power_of_two():
    # amax / 448 = 0.3 -> 2^ceil(log2 0.3) = 2^-1 = 0.5 (rounding down would give 0.25)
    x = torch.zeros(1, 128)
    x[0, 5] = 0.3 * 448
    _, s = ref.act_quant(x, fmt="e4m3fn", scale_fmt="ue8m0")
    assert s.item() == 0.5


def test_fp32_scale_is_amax_over_fmax():
    x = torch.zeros(1, 128)
    x[0, 0] = -0.3 * 448
    _, s = ref.act_quant(x, scale_fmt="fp32")
    assert s.item() == pytest.approx(0.3, rel=1e-7)


def test_exact_power_of_two_scale_is_kept():
    x = torch.zeros(1, 128)
    x[0, 0] = 448.0 * 4  # amax / fmax = 4 exactly -> 4, not 8
    _, s = ref.act_quant(x)
    assert s.item() == 4.0


def test_all_zero_group_uses_amax_floor():
    y, s = ref.act_quant(torch.zeros(2, 256), scale_fmt="fp32")
    assert torch.all(s == torch.tensor(1e-4) / 448)
    assert torch.all(y.float() == 0)
    _, s8 = ref.act_quant(torch.zeros(1, 128), scale_fmt="ue8m0")
    assert s8.item() == 2.0 ** -22  # 1e-4 / 448 = 2.23e-7, and 2^-23 < 2.23e-7 <= 2^-22


def test_fnuz_saturates_at_240_and_fn_at_448():
    x = torch.zeros(1, 128)
    x[0, 0], x[0, 1] = 1000.0, -1000.0
    for fmt, fmax in (("e4m3fnuz", 240.0), ("e4m3fn", 448.0)):
        y, s = ref.act_quant(x, fmt=fmt, scale_fmt="fp32")
        assert y.float()[0, :2].tolist() == [fmax, -fmax]
        assert s.item() == pytest.approx(1000.0 / fmax)


def test_formats_are_objects_with_their_max():
    assert (E4M3FN.max, E4M3FNUZ.max) == (448.0, 240.0)
    assert E4M3FN.dtype == torch.float8_e4m3fn and E4M3FNUZ.dtype == torch.float8_e4m3fnuz
    y, _ = ref.act_quant(torch.ones(1, 128), fmt=E4M3FNUZ, scale_fmt=UE8M0)
    assert y.dtype == torch.float8_e4m3fnuz


def test_pow2_ceil_on_boundaries():
    x = torch.tensor([0.25, 0.3, 0.5, 0.500001, 1.0, 3.0, 2.0 ** -30])
    assert pow2_ceil(x).tolist() == [0.25, 0.5, 0.5, 1.0, 1.0, 4.0, 2.0 ** -30]


def test_dequant_round_trip_within_half_ulp_of_e4m3():
    x = torch.randn(8, 512)
    y, s = ref.act_quant(x, scale_fmt="fp32")
    err = (ref.dequant(y, s) - x).abs()
    # e4m3 has 3 mantissa bits: relative rounding error <= 2^-4 of the value (normals),
    # and at most half the smallest subnormal step (2^-10 * s) near zero
    bound = x.abs() * 2.0 ** -4 + s.repeat_interleave(128, -1) * 2.0 ** -10
    assert torch.all(err <= bound)


def test_weight_dequant_uses_128x128_blocks():
    w = torch.ones(130, 260).to(torch.float8_e4m3fn)
    s = torch.arange(1.0, 7.0).reshape(2, 3)
    out = ref.weight_dequant(w, s)
    assert out[0, 0] == 1 and out[127, 127] == 1 and out[128, 0] == 4 and out[0, 128] == 2 and out[129, 259] == 6


def test_fp8_gemm_applies_both_scales_per_block():
    a = torch.ones(1, 256).to(torch.float8_e4m3fn)
    b = torch.ones(128, 256).to(torch.float8_e4m3fn)
    sa = torch.tensor([[2.0, 3.0]])
    sb = torch.tensor([[5.0, 7.0]])
    c = ref.fp8_gemm(a, sa, b, sb)
    # block 0: 128 * 2 * 5, block 1: 128 * 3 * 7
    assert torch.all(c == 128 * 10 + 128 * 21)


def test_fp8_gemm_equals_matmul_of_dequantized_operands():
    g = torch.Generator().manual_seed(0)
    case = dsport.get_spec("fp8_gemm").cases()[2].make(g)
    c = ref.fp8_gemm(**case)
    # dequantize in float64 here, independently of the ops under test
    a = case["a"].double() * case["sa"].double().repeat_interleave(128, 1)
    sb = case["sb"].double().repeat_interleave(128, 0).repeat_interleave(128, 1)
    b = case["b"].double() * sb[: case["b"].shape[0], : case["b"].shape[1]]
    torch.testing.assert_close(c, a @ b.T, rtol=1e-12, atol=1e-9)
