"""FP8 quantization with torch float8 dtypes. Where the device has no FP8
units the float8 tensors are only storage: values are widened to fp32 before
any arithmetic, which is exact (e4m3 has 4 significant bits), so the result is
bit-identical to the quant-mimicking reference on every device."""
from __future__ import annotations

import torch

from . import policy
from ...core.fp8 import Fp8Format, ScaleFormat, fp8_format, quantize_groups, scale_format


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_groups(x, block, fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant"))


def dequant(y: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    # fp8 value (4 significant bits) times an fp32 scale, rounded once to fp32: equal to the float64 product rounded
    g = y.float().reshape(*y.shape[:-1], y.shape[-1] // block, block)
    return (g * s.unsqueeze(-1)).reshape(y.shape)


def weight_dequant(w: torch.Tensor, s: torch.Tensor, block: int = 128) -> torch.Tensor:
    n, k = w.shape
    full = s.repeat_interleave(block, 0)[:n].repeat_interleave(block, 1)[:, :k]
    return w.float() * full


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """C[m, n] = sum_kb (a_kb . b_kb) * sa[m, kb] * sb[n // 128, kb], bf16 out.

    On a device with a block-scaled FP8 matrix path (:func:`_device_scaled_mm`)
    that path runs; everywhere else the blocked emulation below, which keeps
    the contract's order of operations: every 128-wide partial sum in fp32,
    then scaled. The weight is widened one N-tile at a time into reused
    buffers, never as a whole dense copy."""
    if _device_scaled_mm_ok(a, b, sb):
        return _device_scaled_mm(a, sa, b, sb)
    return _blocked_fp8_gemm(a, sa, b, sb)


FP8_GEMM_TILE_BYTES = 4 << 20
"""fp32 bytes of one widened weight tile: on CPU it stays in the last-level
cache between the widening passes and the GEMM that reads it."""

_FP16_REBIAS = {torch.float8_e4m3fn: 2.0 ** 8, torch.float8_e4m3fnuz: 2.0 ** 7}
"""fp16 exponent bias (15) minus the fp8 format's (7 for e4m3fn, 8 for fnuz)."""


def _widen_fp8_tile(u8: torch.Tensor, i16: torch.Tensor, out: torch.Tensor) -> None:
    """fp8 bytes -> fp32 values divided by the format's _FP16_REBIAS, exactly.

    torch's own float8 -> float32 conversion is element by element on CPU
    (several times slower than a GEMM pass here), so the bits are moved
    instead: an e4m3 byte s.eeee.mmm placed at fp16 bits 15 / 10..13 / 7..9 is
    an fp16 whose value is the fp8 value times 2**-(15 - bias), subnormals
    included (fp16's subnormal step covers e4m3's); the fp16 -> fp32 widening
    is a vectorized hardware conversion. The byte is read as int8 so that the
    sign extends, the shift puts the magnitude in place, and the mask clears
    the one sign-extension bit that lands in the exponent. NaN codes come out
    finite here; the caller marks their columns."""
    i16.copy_(u8.view(torch.int8))
    i16.bitwise_left_shift_(7)
    i16.bitwise_and_(-16385)  # 0xBFFF: keep the sign (bit 15), drop the extended copy at bit 14
    out.copy_(i16.view(torch.float16))


def _nan_rows(u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows of an fp8 tile holding a NaN code (e4m3fn: s.1111.111; fnuz: 0x80)."""
    if dtype == torch.float8_e4m3fnuz:
        return (u8 == 0x80).any(1)
    return (u8 | 0x80).amax(1) == 0xFF


def _blocked_fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n, kb = b.shape[0], k // 128
    out = torch.empty(m, n, dtype=torch.bfloat16, device=a.device)
    if m == 0 or n == 0:
        return out
    if k == 0:
        return out.zero_()
    # a is small next to b (activations): widened whole, per-block view [kb, M, 128]
    a_blk = a.float().view(m, kb, 128).transpose(0, 1)
    sa_t = sa.float().t()[:, :, None]  # [kb, M, 1]
    sb_cols = sb.float().t().repeat_interleave(128, 1)[:, :n] * _FP16_REBIAS[b.dtype]  # [kb, N], the rebias folded in
    u8 = b.contiguous().view(torch.uint8)
    nt = min(n, 128 * max(1, FP8_GEMM_TILE_BYTES // (128 * k * 4)))
    mt = min(m, policy.rows_per_block(kb * nt * 4, a.device, FP8_GEMM_TILE_BYTES * 4))
    i16 = torch.empty(nt, k, dtype=torch.int16, device=a.device)
    w = torch.empty(nt, k, dtype=torch.float32, device=a.device)
    nan = torch.empty(n, dtype=torch.bool, device=a.device)
    for n0 in range(0, n, nt):
        r = min(nt, n - n0)
        tile = u8[n0:n0 + r]
        _widen_fp8_tile(tile, i16[:r], w[:r])
        w_blk = w[:r].view(r, kb, 128).permute(1, 2, 0)  # [kb, 128, r]
        for m0 in range(0, m, mt):
            rows = slice(m0, m0 + mt)
            part = torch.bmm(a_blk[:, rows], w_blk)  # [kb, mt, r]: one fp32 partial sum per 128-block
            part.mul_(sb_cols[:, None, n0:n0 + r]).mul_(sa_t[:, rows])
            out[rows, n0:n0 + r] = part.sum(0)
        nan[n0:n0 + r] = _nan_rows(tile, b.dtype)
    if bool(nan.any()):  # one host sync per call: a NaN weight poisons its whole output column, as in the reference
        out[:, nan] = float("nan")
    return out


def _device_scaled_mm_ok(a: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> bool:
    """Whether torch's block-scaled FP8 GEMM (1x128 activation blocks, 128x128
    weight blocks) can serve this call: CUDA (not ROCm) compute capability 9.x
    with CUDA >= 12.9 (torch's own test gate for blockwise cuBLASLt scaling),
    e4m3fn operands, N a multiple of 128 and K / 128 a multiple of 4 (the
    scale layout cuBLASLt reads without padding). Not exercised here: this
    machine has no GPU."""
    if a.device.type != "cuda" or torch.version.hip or not hasattr(torch.nn.functional, "scaled_mm"):
        return False
    if a.dtype != torch.float8_e4m3fn or a.shape[0] == 0 or b.shape[0] % 128 or (a.shape[1] // 128) % 4:
        return False
    cuda = tuple(int(x) for x in (torch.version.cuda or "0.0").split(".")[:2])
    return torch.cuda.get_device_capability(a.device)[0] == 9 and cuda >= (12, 9)


def _device_scaled_mm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    """cuBLASLt block-scaled FP8 GEMM through ``torch.nn.functional.scaled_mm``:
    scales are applied to each 128-wide fp32 partial sum, the contract's order.
    Layouts as torch's own tests pass them: b as a column-major [K, N], sa
    M-major, sb transposed to [K / 128, N / 128]. Unverified on hardware."""
    F = torch.nn.functional
    return F.scaled_mm(a.contiguous(), b.contiguous().t(),
                       sa.float().t().contiguous().t(), F.ScalingType.BlockWise1x128,
                       sb.float().contiguous().t(), F.ScalingType.BlockWise128x128,
                       output_dtype=torch.bfloat16)
