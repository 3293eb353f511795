// Shared by the sm_90a kernels and by the host check library (g++): every
// function here is plain scalar C++ so the same bits come out of both.
#pragma once
#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__CUDACC__)
#define DS_HD __host__ __device__ __forceinline__
#else
#define DS_HD inline
#endif

namespace dsport {

DS_HD uint32_t f32_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u; memcpy(&u, &x, 4); return u;
#endif
}

DS_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float x; memcpy(&x, &u, 4); return x;
#endif
}

DS_HD bool f32_is_nan(float x) { return (f32_bits(x) & 0x7fffffffu) > 0x7f800000u; }
DS_HD bool f32_is_finite(float x) { return (f32_bits(x) & 0x7f800000u) != 0x7f800000u; }

// float -> bfloat16, round to nearest even; NaN becomes the canonical quiet
// NaN 0x7fc0 with its sign, as torch's .to(bfloat16) writes it.
DS_HD uint16_t f32_to_bf16(float x) {
  uint32_t u = f32_bits(x);
  if (f32_is_nan(x)) return (uint16_t)(((u >> 16) & 0x8000u) | 0x7fc0u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

DS_HD float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

}  // namespace dsport
