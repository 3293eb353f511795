// E8M0 block scales (OCP MX v1.0 §5.4: an 8-bit exponent, value 2^(b - 127), 0xFF = NaN, no sign,
// no zero) and the scale indexing of the E8M0-scaled MFMA, for the host check (g++) and the device.
//
// dsport's block-scaled fp8_gemm keeps fp32 scales sa [M, K/128] and sb [N/128, K/128]. When they
// are ue8m0 values (positive powers of two, what act_quant(scale_fmt="ue8m0") and DeepSeek's
// ue8m0 weight scales are) each is exactly one E8M0 byte, and gfx950's
// v_mfma_scale_f32_16x16x128_f8f6f4 can apply them inside the instruction, per 32-element block
// of K: the 128-block's scale simply repeats over its four 32-blocks. A scale that is not a
// power of two has no E8M0 code: e8m0_encode says so (E8M0_NONE) instead of rounding it.
#pragma once
#include "hip_common.h"

#define E8M0_NAN 0xFF
#define E8M0_NONE 0x1FF  // not a byte: "this fp32 scale has no exact E8M0 code"

// 2^(b - 127) as float32; b = 0 is 2^-127, a float32 subnormal (bit 22 set), b = 0xFF NaN.
DSP_HD DSP_INLINE float e8m0_decode(uint8_t b) {
  if (b == E8M0_NAN) return __builtin_nanf("");
  if (b == 0) return bits_f32(0x00400000u);
  return bits_f32((uint32_t)b << 23);
}

// The exact E8M0 code of a positive power of two in [2^-127, 2^127], else E8M0_NONE
// (zero, negative, NaN, inf, a mantissa, or a subnormal other than 2^-127).
DSP_HD DSP_INLINE int e8m0_encode(float s) {
  uint32_t b = f32_bits(s);
  if (b == 0x00400000u) return 0;
  if (b >> 31) return E8M0_NONE;
  uint32_t e = b >> 23, m = b & 0x7FFFFF;
  if (m != 0 || e == 0 || e == 0xFF) return E8M0_NONE;
  return (int)e;
}

// The scale byte lane (row r of the operand tile, 32-block j of the MFMA's 128 K) feeds the
// instruction for K step kb32 = 4 * kb128 + j: the fp32 scale of its 128-block, as a byte.
// A: scales[r * kblocks + kb32 / 4]  (sa, one per row);  B: scales[(n / 128) * kblocks + kb32 / 4].
DSP_HD DSP_INLINE int mx_scale_a(const float* sa, int kblocks, int m, int kb32) { return e8m0_encode(sa[(long)m * kblocks + kb32 / 4]); }
DSP_HD DSP_INLINE int mx_scale_b(const float* sb, int kblocks, int n, int kb32) { return e8m0_encode(sb[(long)(n / 128) * kblocks + kb32 / 4]); }
