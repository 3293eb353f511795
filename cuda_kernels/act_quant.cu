// act_quant (SPEC §2): per row, per group of 128 along the last dim,
// s = scale(amax), y = fp8(clamp(x / s)).
//
// Mapping: one warp per group, 4 elements per lane (128 = 32 x 4), so the amax
// is a 5-step shuffle reduction with no shared memory and the group's 128
// bf16 inputs are one coalesced 256-byte load. Memory bound: 2 B in, 1 B +
// 4 B / 128 out per element, nothing to tile. All four format pairs are
// template instances, so the format switch costs nothing inside the loop.
// The arithmetic is include/dsport/fp8.cuh, shared with the host check.
#include <cuda_bf16.h>
#include "include/dsport/fp8.cuh"

using namespace dsport;

template <Fp8Kind K, ScaleKind S>
__device__ __forceinline__ void act_quant_group(const __nv_bfloat16* __restrict__ x, uint8_t* __restrict__ y,
                                                float* __restrict__ s, long long group) {
  const int lane = threadIdx.x & 31;
  const __nv_bfloat16* xg = x + group * 128 + lane * 4;
  // 8-byte vector load: 4 bf16 per lane
  const uint2 raw = *reinterpret_cast<const uint2*>(xg);
  float v[4] = {bf16_to_f32((uint16_t)raw.x), bf16_to_f32((uint16_t)(raw.x >> 16)),
                bf16_to_f32((uint16_t)raw.y), bf16_to_f32((uint16_t)(raw.y >> 16))};
  float amax = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float a = fabsf(v[i]);
    amax = (a > amax || f32_is_nan(a)) ? a : amax;  // NaN must win: fmaxf would drop it (SPEC §10)
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float o = __shfl_xor_sync(0xffffffffu, amax, off);
    amax = (o > amax || f32_is_nan(o)) ? o : amax;
  }
  const float sc = group_scale(amax, K, S);
  uint32_t packed = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) packed |= (uint32_t)fp8_quantize(v[i], sc, K) << (8 * i);
  *reinterpret_cast<uint32_t*>(y + group * 128 + lane * 4) = packed;
  if (lane == 0) s[group] = sc;
}

// x: [groups * 128] bf16 contiguous (the launcher makes the last dim
// contiguous); y: fp8 bytes, same shape; s: [groups] fp32.
#define DS_ACT_QUANT(NAME, K, S)                                                                        \
  extern "C" __global__ void __launch_bounds__(256) NAME(const __nv_bfloat16* __restrict__ x,            \
      uint8_t* __restrict__ y, float* __restrict__ s, long long groups) {                               \
    const long long g = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                 \
    if (g < groups) act_quant_group<K, S>(x, y, s, g);                                                  \
  }

DS_ACT_QUANT(act_quant_e4m3fn_ue8m0, E4M3FN, SCALE_UE8M0)
DS_ACT_QUANT(act_quant_e4m3fn_fp32, E4M3FN, SCALE_FP32)
DS_ACT_QUANT(act_quant_e4m3fnuz_ue8m0, E4M3FNUZ, SCALE_UE8M0)
DS_ACT_QUANT(act_quant_e4m3fnuz_fp32, E4M3FNUZ, SCALE_FP32)
