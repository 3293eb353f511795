// FP8 element codecs and group scales (SPEC §2, §10), bit-exact with
// dsport.core.fp8. Written from the bit patterns instead of the cuda_fp8.h
// intrinsics for two reasons: the same code must run in the g++ host check,
// and e4m3fnuz (gfx942's format) has no NVIDIA intrinsic at all.
#pragma once
#include "common.cuh"

namespace dsport {

enum Fp8Kind : int { E4M3FN = 0, E4M3FNUZ = 1 };

// The largest finite value: 448 (1.75 * 2^8) for e4m3fn, 240 (1.875 * 2^7) for
// e4m3fnuz. Never hard-coded elsewhere: every kernel takes it from here.
DS_HD float fp8_max(Fp8Kind k) { return k == E4M3FN ? 448.0f : 240.0f; }

// Saturating round-to-nearest-even cast, as Fp8Format.cast: |x| beyond max
// clamps, NaN stays NaN (0x7f/0xff for e4m3fn, 0x80 — the only NaN — for
// e4m3fnuz). e4m3fnuz has no -0: a value that rounds to zero is 0x00.
DS_HD uint8_t fp8_encode(float x, Fp8Kind k) {
  const uint32_t u = f32_bits(x);
  const uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
  if (f32_is_nan(x)) return k == E4M3FN ? (uint8_t)(sign | 0x7f) : (uint8_t)0x80;
  const int bias = k == E4M3FN ? 7 : 8;
  float a = bits_f32(u & 0x7fffffffu);
  const float mx = fp8_max(k);
  if (a > mx) a = mx;
  // Exponent of the smallest normal: below it the grid is uniform with step
  // 2^(1 - bias - 3), and rint of the exactly-scaled value rounds to even.
  const int emin = 1 - bias;
  uint8_t mag;
  const int e = (int)((f32_bits(a) >> 23) & 0xffu) - 127;  // a is normal or zero here (a <= 448)
  if (a == 0.0f || e < emin) {
    // subnormal (or zero): a * 2^(3 - emin) is exact in float, its rint is the code
    mag = (uint8_t)rintf(ldexpf(a, 3 - emin));  // 8 rounds up into the smallest normal code, correctly
  } else {
    int ee = e;
    int r = (int)rintf(ldexpf(a, 3 - ee));  // in [8, 16]
    if (r == 16) { r = 8; ++ee; }
    mag = (uint8_t)(((ee + bias) << 3) | (r - 8));
  }
  if (k == E4M3FNUZ && mag == 0) return 0;  // no negative zero: 0x80 is NaN
  return (uint8_t)(sign | mag);
}

DS_HD float fp8_decode(uint8_t b, Fp8Kind k) {
  const int bias = k == E4M3FN ? 7 : 8;
  if (k == E4M3FNUZ && b == 0x80) return bits_f32(0x7fc00000u);
  if (k == E4M3FN && (b & 0x7f) == 0x7f) return bits_f32(0x7fc00000u | ((uint32_t)(b & 0x80) << 24));
  const int e = (b >> 3) & 0xf, m = b & 7;
  const float mag = e == 0 ? ldexpf((float)m, 1 - bias - 3) : ldexpf((float)(8 + m), e - bias - 3);
  return (b & 0x80) ? -mag : mag;
}

enum ScaleKind : int { SCALE_FP32 = 0, SCALE_UE8M0 = 1 };

// 2^ceil(log2(s)) from the bits (no log2 rounding, so device and host agree).
// Non-finite stays non-finite (SPEC §10: an inf/NaN amax never becomes a finite
// stand-in such as 1).
DS_HD float pow2_ceil(float s) {
  if (!f32_is_finite(s)) return s;
  uint32_t u = f32_bits(s);
  if ((u & 0x7fffffu) == 0) return s;          // already a power of two
  uint32_t e = ((u >> 23) & 0xffu) + 1u;       // s >= 1e-4/448 is normal: no subnormal case is reachable
  return e >= 255u ? bits_f32(0x7f800000u) : bits_f32(e << 23);
}

// Dequantization scale of a group with this amax. The floor is on the amax
// (dsport's convention; FlashMLA floors the scale instead) and written as a
// comparison, so a NaN amax passes through: fmaxf(NaN, 1e-4) would be 1e-4.
DS_HD float group_scale(float amax, Fp8Kind k, ScaleKind sk) {
  const float a = amax < 1e-4f ? 1e-4f : amax;
  const float s = a / fp8_max(k);
  return sk == SCALE_UE8M0 ? pow2_ceil(s) : s;
}

DS_HD uint8_t fp8_quantize(float x, float scale, Fp8Kind k) { return fp8_encode(x / scale, k); }

}  // namespace dsport
