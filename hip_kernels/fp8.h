// FP8 e4m3 in both flavours, one scalar definition for the host check (g++) and
// the device (clang -x hip):
//
//   e4m3fn   (OCP; gfx950 computes in it)   bias 7, max 448, 0x7F/0xFF NaN, 0x80 = -0
//   e4m3fnuz (gfx942 computes in it)        bias 8, max 240, 0x80 the only NaN, no -0
//
// The same bits mean values a factor 2 apart, and the same conversion
// instruction (v_cvt_pk_fp8_f32) produces fnuz on gfx942 and fn on gfx950, so the
// format is a template parameter chosen by the caller from the target (never
// "whatever the instruction does"), and the hardware path is taken only when the
// requested format is the one the target's instruction produces.
//
// Contract (SPEC §2, dsport.core.fp8.Fp8Format.cast): saturating round to nearest
// even: values beyond +-max (and +-inf) clamp to +-max, NaN stays NaN, and under
// fnuz a value that rounds to -0 is written 0x00 (0x80 would read back as NaN).
#pragma once
#include "hip_common.h"

enum Fp8Kind { E4M3FN = 0, E4M3FNUZ = 1 };

template <int K> struct Fp8Traits;
template <> struct Fp8Traits<E4M3FN> { static constexpr int bias = 7; static constexpr float max = 448.0f; static constexpr uint8_t nan = 0x7F; };
template <> struct Fp8Traits<E4M3FNUZ> { static constexpr int bias = 8; static constexpr float max = 240.0f; static constexpr uint8_t nan = 0x80; };

#if defined(__HIP_DEVICE_COMPILE__)
#if defined(__gfx942__)
#define DSP_NATIVE_FP8 E4M3FNUZ
#elif defined(__gfx950__)
#define DSP_NATIVE_FP8 E4M3FN
#endif
#endif

// 2**e for e in the float32 normal range, built from the bits (exact, no libm).
DSP_HD DSP_INLINE float exp2i(int e) { return bits_f32((uint32_t)(e + 127) << 23); }

// Software encoder: every step is exact in float32 except the one rint, which
// rounds to nearest even, so the result is the correctly rounded e4m3 value.
template <int K> DSP_HD DSP_INLINE uint8_t fp8_encode_sw(float x) {
  typedef Fp8Traits<K> T;
  uint32_t sign = (f32_bits(x) >> 24) & 0x80;
  if (is_nan(x)) return K == E4M3FNUZ ? 0x80 : (uint8_t)(sign | 0x7F);
  float a = __builtin_fabsf(x);
  if (a > T::max) a = T::max;
  const int emin = 1 - T::bias;                   // exponent of the smallest normal
  uint32_t code;
  if (a < exp2i(emin)) {                          // subnormal: multiples of 2**(emin-3)
    code = (uint32_t)__builtin_rintf(a * exp2i(3 - emin));  // 8 = the smallest normal, encoded alike
  } else {
    int e = (int)((f32_bits(a) >> 23) & 0xFF) - 127;
    uint32_t m = (uint32_t)__builtin_rintf(a * exp2i(3 - e)) - 8;  // in [0, 8]; 8 carries into the exponent
    code = ((uint32_t)(e + T::bias) << 3) + m;
  }
  if (code == 0) return K == E4M3FNUZ ? 0 : (uint8_t)sign;  // fnuz: -0 does not exist
  return (uint8_t)(sign | code);
}

template <int K> DSP_HD DSP_INLINE float fp8_decode_sw(uint8_t b) {
  typedef Fp8Traits<K> T;
  if (K == E4M3FNUZ ? b == 0x80 : (b & 0x7F) == 0x7F) return __builtin_nanf("");
  int e = (b >> 3) & 0xF, m = b & 7;
  float v = e == 0 ? (float)m * exp2i(1 - T::bias - 3) : (float)(8 + m) * exp2i(e - T::bias - 3);
  return (b & 0x80) ? -v : v;
}

// The encoder kernels call. On the device, when K is the target's own format,
// the conversion instruction does the rounding (RNE) after an explicit clamp:
// v_cvt_pk_fp8_f32 without the clamp turns overflow into NaN, and fmed3 alone
// would turn NaN into +-max, hence the NaN select.
template <int K> DSP_HD DSP_INLINE uint8_t fp8_encode(float x) {
#if defined(DSP_NATIVE_FP8)
  if (K == DSP_NATIVE_FP8) {
    typedef Fp8Traits<K> T;
    float c = is_nan(x) ? x : __builtin_amdgcn_fmed3f(x, -T::max, T::max);
    uint8_t b = (uint8_t)__builtin_amdgcn_cvt_pk_fp8_f32(c, c, 0, false);
    // fnuz: a tiny negative value may round to the -0 pattern, which is NaN there;
    // one v_cndmask makes it +0 (what torch's float8_e4m3fnuz cast writes). Only a
    // gfx942 run can say whether the instruction ever produces 0x80 for a finite input.
    if (K == E4M3FNUZ && (b & 0x7F) == 0 && !is_nan(x)) b = 0;
    return b;
  }
#endif
  return fp8_encode_sw<K>(x);
}

template <int K> DSP_HD DSP_INLINE float fp8_decode(uint8_t b) {
#if defined(DSP_NATIVE_FP8)
  if (K == DSP_NATIVE_FP8) return __builtin_amdgcn_cvt_f32_fp8((int)b, 0);
#endif
  return fp8_decode_sw<K>(b);
}

// Two values per instruction: the packer kernels use, 4 bytes per 32-bit store.
template <int K> DSP_HD DSP_INLINE uint32_t fp8_encode4(float a, float b, float c, float d) {
  return (uint32_t)fp8_encode<K>(a) | ((uint32_t)fp8_encode<K>(b) << 8) | ((uint32_t)fp8_encode<K>(c) << 16) |
         ((uint32_t)fp8_encode<K>(d) << 24);
}

// ---- OCP e5m2 (bias 15, max 57344, has inf and NaN): only TileLang's gfx950 templates need it
// (the ocp_fp8/ overlay); the same exact-steps-plus-one-rint scheme as e4m3, saturating
// finite (what __HIP_SATFINITE asks), NaN kept.
DSP_HD DSP_INLINE uint8_t e5m2_encode_sw(float x) {
  uint32_t sign = (f32_bits(x) >> 24) & 0x80;
  if (is_nan(x)) return (uint8_t)(sign | 0x7F);
  float a = __builtin_fabsf(x);
  if (a > 57344.0f) a = 57344.0f;
  uint32_t code;
  if (a < exp2i(-14)) {
    code = (uint32_t)__builtin_rintf(a * exp2i(16));  // subnormals: multiples of 2**-16
  } else {
    int e = (int)((f32_bits(a) >> 23) & 0xFF) - 127;
    code = ((uint32_t)(e + 15) << 2) + ((uint32_t)__builtin_rintf(a * exp2i(2 - e)) - 4);
  }
  return (uint8_t)(sign | code);
}

DSP_HD DSP_INLINE float e5m2_decode_sw(uint8_t b) {
  int e = (b >> 2) & 0x1F, m = b & 3;
  float v = e == 31 ? (m ? __builtin_nanf("") : __builtin_inff())
                    : (e == 0 ? (float)m * exp2i(-16) : (float)(4 + m) * exp2i(e - 17));
  return (b & 0x80) ? -v : v;
}

// ---- scales (SPEC §2): amax floored at 1e-4, s = amax / fmax, ue8m0 rounds s UP to 2**k ----
#define DSP_AMAX_FLOOR 1e-4f

// 2**ceil(log2(s)) from the bits: a power of two is its own ceiling, anything
// else goes to the next exponent. Non-finite s stays non-finite (SPEC §10: a
// NaN/inf group never gets a finite stand-in scale).
DSP_HD DSP_INLINE float ue8m0_ceil(float s) {
  uint32_t b = f32_bits(s);
  if (((b >> 23) & 0xFF) == 0xFF) return s;
  if ((b & 0x7FFFFF) == 0) return s;
  return bits_f32(((b >> 23) + 1) << 23);
}

// The dequantization scale of a group with this amax; the float32 divide is the
// correctly rounded one (HIP's default -fhip-fp32-correctly-rounded-divide-sqrt).
template <int K> DSP_HD DSP_INLINE float group_scale(float amax, bool ue8m0) {
  float a = is_nan(amax) ? amax : (amax < DSP_AMAX_FLOOR ? DSP_AMAX_FLOOR : amax);
  float s = a / Fp8Traits<K>::max;
  return ue8m0 ? ue8m0_ceil(s) : s;
}

DSP_HD DSP_INLINE float amax_step(float acc, float v) {
  float a = __builtin_fabsf(v);
  return (is_nan(a) || a > acc) ? a : acc;  // NaN is sticky, like torch's amax
}
