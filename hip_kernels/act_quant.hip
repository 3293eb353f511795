// act_quant (SPEC §2): per row, per 128-group, s = scale(amax), y = cast(x / s).
//
// One wave64 per group: 128 bf16 = 64 lanes x 2, so a group is one 256-byte
// coalesced load, its amax a 6-step ds_bpermute butterfly (no LDS, no barrier),
// and its 128 output bytes one 2-byte store per lane. A 256-thread workgroup
// (4 waves, one per SIMD) takes 4 consecutive groups. Bandwidth-bound: no
// matrix cores, and nothing to stage in LDS.
#include "fp8.h"

#ifndef DSP_FMT
#error "DSP_FMT (the target's FP8 format) must be given by the build"
#endif

template <bool UE8M0>
__attribute__((device)) static inline void act_quant_group(const uint16_t* __restrict__ x, uint8_t* __restrict__ y,
                                                          float* __restrict__ s, long groups) {
  long g = (long)bid_x() * 4 + (tid() >> 6);
  if (g >= groups) return;
  int lane = lane_id();
  uint32_t pair = ((const uint32_t*)(x + g * 128))[lane];
  float a = bf16_to_f32((uint16_t)pair), b = bf16_to_f32((uint16_t)(pair >> 16));
  float amax = wave_max(amax_step(amax_step(0.0f, a), b));
  float sc = group_scale<DSP_FMT>(amax, UE8M0);
  uint16_t out = (uint16_t)fp8_encode<DSP_FMT>(a / sc) | ((uint16_t)fp8_encode<DSP_FMT>(b / sc) << 8);
  ((uint16_t*)(y + g * 128))[lane] = out;
  if (lane == 0) s[g] = sc;
}

// x: bf16 [rows, N] contiguous, N % 128 == 0; groups = rows * N / 128.
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_act_quant_ue8m0(const uint16_t* x, uint8_t* y, float* s, long groups) { act_quant_group<true>(x, y, s, groups); }

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_act_quant_fp32(const uint16_t* x, uint8_t* y, float* s, long groups) { act_quant_group<false>(x, y, s, groups); }
