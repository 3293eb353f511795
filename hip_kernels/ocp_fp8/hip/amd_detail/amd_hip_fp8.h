// dsport's overlay of ROCm's amd_hip_fp8.h: ROCm 6.2's FNUZ types, plus the OCP
// FP8 types and conversions ROCm 6.3 added, which TileLang's HIP templates use on
// gfx950 (MI350 computes in OCP e4m3fn / e5m2). It exists so that the header-only
// ROCm 6.2 tree this project builds against (dsport hip-headers) compiles TileLang's
// gfx950 kernels; a ROCm >= 6.3 tree has its own and this directory is not used.
//
// What is provided: the interpretation enum extended with __HIP_E4M3 / __HIP_E5M2,
// __hip_cvt_float_to_fp8 / __hip_cvt_float2_to_fp8x2 for them, and the types
// __hip_fp8_e4m3, __hip_fp8x2_e4m3, __hip_fp8x4_e4m3, __hip_fp8_e5m2 (x2, x4) with
// raw storage __x, construction from float and conversion to float. The arithmetic
// is hip_kernels/fp8.h: on gfx950 the conversion instructions (v_cvt_pk_fp8_f32 and
// v_cvt_pk_bf8_f32 produce OCP there) after a saturating clamp; elsewhere the
// software encoders checked bit-exact against torch (tests/test_hip_host.py).
#pragma once

// ROCm 6.2's enum has no OCP members, and an enum cannot be reopened: its type and
// enumerators are renamed while the original is read, and a complete one is declared after.
#define __hip_fp8_interpretation_t __hip_fp8_interpretation_t_rocm62
#define __HIP_E4M3_FNUZ __HIP_E4M3_FNUZ_rocm62
#define __HIP_E5M2_FNUZ __HIP_E5M2_FNUZ_rocm62
#include_next <hip/amd_detail/amd_hip_fp8.h>
#undef __hip_fp8_interpretation_t
#undef __HIP_E4M3_FNUZ
#undef __HIP_E5M2_FNUZ

#include "../../../fp8.h"

enum __hip_fp8_interpretation_t {
  __HIP_E4M3_FNUZ = 0,
  __HIP_E5M2_FNUZ = 1,
  __HIP_E4M3 = 2,
  __HIP_E5M2 = 3,
};

namespace dsport_ocp {
DSP_HD DSP_INLINE unsigned char e5m2(float x, bool sat) {
#if defined(__HIP_DEVICE_COMPILE__) && defined(__gfx950__)
  float c = is_nan(x) || !sat ? x : __builtin_amdgcn_fmed3f(x, -57344.0f, 57344.0f);
  return (unsigned char)__builtin_amdgcn_cvt_pk_bf8_f32(c, c, 0, false);
#else
  return e5m2_encode_sw(sat ? x : x);  // the software encoder saturates finite
#endif
}
DSP_HD DSP_INLINE float e5m2_to_f32(unsigned char b) {
#if defined(__HIP_DEVICE_COMPILE__) && defined(__gfx950__)
  return __builtin_amdgcn_cvt_f32_bf8((int)b, 0);
#else
  return e5m2_decode_sw(b);
#endif
}
}  // namespace dsport_ocp

__FP8_HOST_DEVICE_STATIC__ __hip_fp8_storage_t __hip_cvt_float_to_fp8(const float f, const __hip_saturation_t sat,
                                                                     const __hip_fp8_interpretation_t type) {
  switch (type) {
    case __HIP_E4M3: return fp8_encode<E4M3FN>(f);  // saturating, like __HIP_SATFINITE
    case __HIP_E5M2: return dsport_ocp::e5m2(f, sat == __HIP_SATFINITE);
    case __HIP_E4M3_FNUZ: return __hip_cvt_float_to_fp8(f, sat, __HIP_E4M3_FNUZ_rocm62);
    default: return __hip_cvt_float_to_fp8(f, sat, __HIP_E5M2_FNUZ_rocm62);
  }
}

__FP8_HOST_DEVICE_STATIC__ __hip_fp8x2_storage_t __hip_cvt_float2_to_fp8x2(const float2 f2, const __hip_saturation_t sat,
                                                                          const __hip_fp8_interpretation_t type) {
  return (__hip_fp8x2_storage_t)((unsigned)__hip_cvt_float_to_fp8(f2.y, sat, type) << 8 |
                                 (unsigned)__hip_cvt_float_to_fp8(f2.x, sat, type));
}

#define DSP_OCP_FP8(NAME, ENC, DEC)                                                                  \
  struct NAME {                                                                                      \
    __hip_fp8_storage_t __x;                                                                         \
    NAME() = default;                                                                                \
    __FP8_HOST_DEVICE__ NAME(const float f) : __x(ENC) {}                                             \
    __FP8_HOST_DEVICE__ NAME(const double f) : NAME(static_cast<float>(f)) {}                         \
    __FP8_HOST_DEVICE__ NAME(const int f) : NAME(static_cast<float>(f)) {}                            \
    __FP8_HOST_DEVICE__ operator float() const { return DEC; }                                        \
  };                                                                                                 \
  struct NAME##x2_pack {                                                                             \
    __hip_fp8x2_storage_t __x;                                                                       \
    NAME##x2_pack() = default;                                                                       \
    __FP8_HOST_DEVICE__ NAME##x2_pack(const float2 v)                                                \
        : __x((__hip_fp8x2_storage_t)(NAME(v.x).__x | (unsigned)NAME(v.y).__x << 8)) {}             \
    __FP8_HOST_DEVICE__ operator float2() const {                                                     \
      NAME lo, hi;                                                                                   \
      lo.__x = (__hip_fp8_storage_t)(__x & 0xFF);                                                    \
      hi.__x = (__hip_fp8_storage_t)(__x >> 8);                                                      \
      return float2(static_cast<float>(lo), static_cast<float>(hi));                                 \
    }                                                                                                \
  };                                                                                                 \
  struct NAME##x4_pack {                                                                             \
    __hip_fp8x4_storage_t __x;                                                                       \
    NAME##x4_pack() = default;                                                                       \
    __FP8_HOST_DEVICE__ NAME##x4_pack(const float4 v)                                                \
        : __x(NAME(v.x).__x | (unsigned)NAME(v.y).__x << 8 | (unsigned)NAME(v.z).__x << 16 |       \
              (unsigned)NAME(v.w).__x << 24) {}                                                      \
    __FP8_HOST_DEVICE__ operator float4() const {                                                     \
      float r[4];                                                                                    \
      for (int i = 0; i < 4; ++i) {                                                                  \
        NAME b;                                                                                      \
        b.__x = (__hip_fp8_storage_t)(__x >> (8 * i));                                               \
        r[i] = static_cast<float>(b);                                                                \
      }                                                                                              \
      return float4(r[0], r[1], r[2], r[3]);                                                         \
    }                                                                                                \
  };

DSP_OCP_FP8(__hip_fp8_e4m3, fp8_encode<E4M3FN>(f), fp8_decode<E4M3FN>(__x))
DSP_OCP_FP8(__hip_fp8_e5m2, dsport_ocp::e5m2(f, true), dsport_ocp::e5m2_to_f32(__x))
#undef DSP_OCP_FP8

typedef __hip_fp8_e4m3x2_pack __hip_fp8x2_e4m3;
typedef __hip_fp8_e4m3x4_pack __hip_fp8x4_e4m3;
typedef __hip_fp8_e5m2x2_pack __hip_fp8x2_e5m2;
typedef __hip_fp8_e5m2x4_pack __hip_fp8x4_e5m2;
