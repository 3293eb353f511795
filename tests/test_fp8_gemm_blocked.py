"""The torch backend's blocked fp8_gemm: its bit-level FP8 widening, its tiling
and its non-finite semantics, each against the float64 reference or torch's own
float8 conversion (never against itself)."""
from __future__ import annotations

import pytest
import torch

from dsport.backends.reference.quant import fp8_gemm as reference
from dsport.backends.torch import quant
from dsport.conformance.metrics import close
from dsport.conformance.tolerances import tolerance

FORMATS = (torch.float8_e4m3fn, torch.float8_e4m3fnuz)


def widen_all_codes(widen, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(widened * rebias, torch's float8 -> float32) for all 256 byte codes."""
    u8 = torch.arange(256, dtype=torch.uint8).view(1, 256)
    out = torch.empty(1, 256)
    widen(u8, torch.empty(1, 256, dtype=torch.int16), out)
    return out[0] * quant._FP16_REBIAS[dtype], u8.view(dtype).float()[0]


def exact_on_finite_codes(got: torch.Tensor, want: torch.Tensor) -> bool:
    fin = want.isfinite()
    return torch.equal(got[fin], want[fin]) and torch.equal(got[fin].signbit(), want[fin].signbit())


@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_widening_is_exact_on_every_finite_code(dtype):
    got, want = widen_all_codes(quant._widen_fp8_tile, dtype)
    assert exact_on_finite_codes(got, want)


def test_widening_check_catches_a_planted_sign_bug():
    def no_sign_mask(u8, i16, out):  # planted: forgets to clear the sign-extension bit in the exponent
        i16.copy_(u8.view(torch.int8))
        i16.bitwise_left_shift_(7)
        out.copy_(i16.view(torch.float16))

    got, want = widen_all_codes(no_sign_mask, torch.float8_e4m3fn)
    assert not exact_on_finite_codes(got, want)


@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_nan_codes_are_found(dtype):
    u8 = torch.arange(256, dtype=torch.uint8).view(256, 1)
    want = u8.view(dtype).float()[:, 0].isnan()
    assert torch.equal(quant._nan_rows(u8, dtype), want)


def _operands(gen, m, n, k, dtype=torch.float8_e4m3fn):
    fmax = 448.0 if dtype == torch.float8_e4m3fn else 240.0
    a = (torch.randn(m, k, generator=gen) * fmax / 4).clamp(-fmax, fmax).to(dtype)
    b = (torch.randn(n, k, generator=gen) * fmax / 4).clamp(-fmax, fmax).to(dtype)
    sa = torch.exp2(torch.randint(-8, 3, (m, k // 128), generator=gen).float())
    sb = torch.rand(-(-n // 128), k // 128, generator=gen) * 1e-3 + 1e-4
    return a, sa, b, sb


def _judge(out, a, sa, b, sb, dtype):
    tol = tolerance("fp8_gemm", None, torch.bfloat16, str(dtype).removeprefix("torch.float8_"), a.shape[1])
    j = close(out, reference(a, sa, b, sb), tol)
    assert j.ok, j.reason


@pytest.mark.parametrize("dtype", FORMATS, ids=str)
def test_many_tiles_ragged_n_match_the_reference(monkeypatch, dtype):
    # a tiny tile budget forces several N-tiles (the last one ragged) and several M-tiles
    monkeypatch.setattr(quant, "FP8_GEMM_TILE_BYTES", 128 * 384 * 4)
    widened = []
    real = quant._widen_fp8_tile
    monkeypatch.setattr(quant, "_widen_fp8_tile", lambda u8, i16, out: (widened.append(out.numel()), real(u8, i16, out)))
    a, sa, b, sb = _operands(torch.Generator().manual_seed(1), 70, 330, 384, dtype)
    out = quant.fp8_gemm(a, sa, b, sb)
    _judge(out, a, sa, b, sb, dtype)
    assert len(widened) == 3 and max(widened) == 128 * 384  # never the whole [330, 384] weight at once


def test_non_finite_in_non_finite_out_where_the_reference_has_them():
    a, sa, b, sb = _operands(torch.Generator().manual_seed(3), 6, 300, 256)
    b.view(torch.uint8)[7, 3] = 0x7F       # +NaN weight code
    b.view(torch.uint8)[250, 200] = 0xFF   # -NaN weight code, second tile
    a.view(torch.uint8)[2, 5] = 0x7F       # NaN activation
    sb[1, 1] = float("inf")                # an infinite weight scale
    sa[3, 0] = 0.0                         # ... meeting a zero activation scale: 0 * inf
    out, want = quant.fp8_gemm(a, sa, b, sb).double(), reference(a, sa, b, sb)
    assert want.isnan().any() and want.isinf().any()
    assert torch.equal(out.isnan(), want.isnan()) and torch.equal(out.isinf(), want.isinf())
    assert torch.equal(out[want.isinf()].sign(), want[want.isinf()].sign())


@pytest.mark.parametrize("m,n", [(0, 128), (4, 0)])
def test_empty_operands(m, n):
    a, sa, b, sb = _operands(torch.Generator().manual_seed(4), m, n, 256)
    out = quant.fp8_gemm(a, sa, b, sb)
    assert out.shape == (m, n) and out.dtype == torch.bfloat16


def test_device_fp8_path_is_not_taken_on_cpu():
    a, sa, b, sb = _operands(torch.Generator().manual_seed(5), 4, 128, 512)
    assert not quant._device_scaled_mm_ok(a, b, sb)


def test_without_nan_marking_a_nan_weight_would_come_out_finite(monkeypatch):
    # planted: the widening alone turns NaN codes into finite values; the column marking is what keeps SPEC §10
    monkeypatch.setattr(quant, "_nan_rows", lambda u8, dtype: torch.zeros(u8.shape[0], dtype=torch.bool))
    a, sa, b, sb = _operands(torch.Generator().manual_seed(6), 3, 128, 256)
    b.view(torch.uint8)[5, 9] = 0x7F
    assert reference(a, sa, b, sb)[:, 5].isnan().all()
    assert quant.fp8_gemm(a, sa, b, sb)[:, 5].isfinite().all()
