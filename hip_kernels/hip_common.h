// Shared by every file in hip_kernels/: the attribute spellings, work-item ids
// and wave-level helpers, written on clang builtins so that device code compiles
// with `-nogpuinc -nogpulib` (no ROCm headers, no device libraries), and so the
// scalar headers compile unchanged with g++ for the host check.
#pragma once
#include <stdint.h>

#if defined(__HIP__)
#define DSP_HD __attribute__((host)) __attribute__((device))
#define DSP_DEVICE __attribute__((device))
#define DSP_GLOBAL extern "C" __attribute__((global))
#define DSP_SHARED __attribute__((shared))
#define DSP_INLINE inline __attribute__((always_inline))
#else
#define DSP_HD
#define DSP_DEVICE
#define DSP_INLINE inline
#endif

#if defined(__HIP_DEVICE_COMPILE__)
// CDNA3/CDNA4 run wave64: every lane-level reduction below spans 64 lanes, and a
// 256-thread workgroup is 4 waves (one per SIMD of a CU).
#define DSP_WAVE 64
DSP_DEVICE DSP_INLINE int tid() { return __builtin_amdgcn_workitem_id_x(); }
DSP_DEVICE DSP_INLINE int bid_x() { return __builtin_amdgcn_workgroup_id_x(); }
DSP_DEVICE DSP_INLINE int bid_y() { return __builtin_amdgcn_workgroup_id_y(); }
DSP_DEVICE DSP_INLINE void barrier() { __builtin_amdgcn_fence(__ATOMIC_RELEASE, "workgroup"); __builtin_amdgcn_s_barrier(); __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "workgroup"); }

// Cross-lane exchange through ds_bpermute: the LDS crossbar without an LDS
// allocation, so wave reductions cost no LDS and no barrier.
DSP_DEVICE DSP_INLINE float shfl_xor(float v, int mask) {
  int lane = __builtin_amdgcn_mbcnt_hi(~0u, __builtin_amdgcn_mbcnt_lo(~0u, 0u));
  int src = (lane ^ mask) << 2;
  return __builtin_bit_cast(float, __builtin_amdgcn_ds_bpermute(src, __builtin_bit_cast(int, v)));
}
DSP_DEVICE DSP_INLINE unsigned shfl_xor_u(unsigned v, int mask) {
  int lane = __builtin_amdgcn_mbcnt_hi(~0u, __builtin_amdgcn_mbcnt_lo(~0u, 0u));
  return (unsigned)__builtin_amdgcn_ds_bpermute((lane ^ mask) << 2, (int)v);
}
DSP_DEVICE DSP_INLINE float wave_max(float v) {
  for (int m = 32; m > 0; m >>= 1) { float o = shfl_xor(v, m); v = (o > v || o != o) ? o : v; }  // NaN wins: non-finite in, non-finite out
  return v;
}
DSP_DEVICE DSP_INLINE float wave_sum(float v) {
  for (int m = 32; m > 0; m >>= 1) v += shfl_xor(v, m);
  return v;
}
DSP_DEVICE DSP_INLINE int lane_id() { return __builtin_amdgcn_mbcnt_hi(~0u, __builtin_amdgcn_mbcnt_lo(~0u, 0u)); }
#endif

DSP_HD DSP_INLINE uint32_t f32_bits(float x) { return __builtin_bit_cast(uint32_t, x); }
DSP_HD DSP_INLINE float bits_f32(uint32_t b) { return __builtin_bit_cast(float, b); }
DSP_HD DSP_INLINE bool is_nan(float x) { return x != x; }
DSP_HD DSP_INLINE float bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }
// Round-to-nearest-even to bf16, NaN kept quiet (what torch's .to(bfloat16) does).
DSP_HD DSP_INLINE uint16_t f32_to_bf16(float x) {
  uint32_t b = f32_bits(x);
  if (is_nan(x)) return (uint16_t)((b >> 16) | 0x40);
  b += 0x7FFF + ((b >> 16) & 1);
  return (uint16_t)(b >> 16);
}
