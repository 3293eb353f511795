// rms_norm and rope (SPEC §3), the memory-bound glue around MLA and the indexer.
//
// rms_norm: one block per row, D = 7168 / 1536 / 512 in DeepSeek-V3.2, so a
// 256-thread block reads each row once with 16-byte loads and reduces the sum
// of squares in fp32 through warp shuffles plus one shared-memory step (8
// partials). The fused residual add writes the new residual (rounded to bf16)
// in the same pass, but the norm is taken of the fp32 sum, as the reference
// takes it of the exact sum: norming the rounded residual would add one bf16
// rounding the spec does not have.
//
// rope: one thread per rotated pair. The angle t * f_i is computed in fp32 and
// sincosf is the accurate (not __sinf) version: with positions up to 160K the
// fast intrinsic's range reduction loses the angle entirely.
#include <cuda_bf16.h>
#include "include/dsport/common.cuh"

using namespace dsport;

__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = lane < (blockDim.x >> 5) ? red[lane] : 0.0f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;  // every thread holds the block sum
}

// x, residual, y, res_out: [rows, d] bf16, d % 8 == 0 (16-byte vectors); w [d] bf16.
// residual == nullptr: plain norm. Requires blockDim.x == 256 and d <= 256 * 8 * 4.
extern "C" __global__ void __launch_bounds__(256) rms_norm_bf16(
    const __nv_bfloat16* __restrict__ x, const __nv_bfloat16* __restrict__ residual, const __nv_bfloat16* __restrict__ w,
    __nv_bfloat16* __restrict__ y, __nv_bfloat16* __restrict__ res_out, int d, float eps) {
  __shared__ float red[8];
  constexpr int VEC = 8, MAXV = 4;  // up to 4 vectors of 8 per thread: d <= 8192 stays in registers
  const long long row = blockIdx.x;
  float v[MAXV][VEC];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < MAXV; ++j) {
    const int c = (threadIdx.x + j * blockDim.x) * VEC;
    // a guard, not a break: the loop stays fully unrolled and v[][] stays in registers
    if (c >= d) { for (int i = 0; i < VEC; ++i) v[j][i] = 0.0f; continue; }
    const uint4 a = *reinterpret_cast<const uint4*>(x + row * d + c);
    const uint16_t* ah = reinterpret_cast<const uint16_t*>(&a);
    uint4 r = make_uint4(0, 0, 0, 0);
    if (residual) r = *reinterpret_cast<const uint4*>(residual + row * d + c);
    const uint16_t* rh = reinterpret_cast<const uint16_t*>(&r);
    uint4 sum;
    uint16_t* sh = reinterpret_cast<uint16_t*>(&sum);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      float f = bf16_to_f32(ah[i]);
      if (residual) { f += bf16_to_f32(rh[i]); sh[i] = f32_to_bf16(f); }
      v[j][i] = f;
      ss += f * f;
    }
    if (residual) *reinterpret_cast<uint4*>(res_out + row * d + c) = sum;
  }
  const float rstd = rsqrtf(block_sum(ss, red) / (float)d + eps);
#pragma unroll
  for (int j = 0; j < MAXV; ++j) {
    const int c = (threadIdx.x + j * blockDim.x) * VEC;
    if (c >= d) continue;
    const uint4 wv = *reinterpret_cast<const uint4*>(w + c);
    const uint16_t* wh = reinterpret_cast<const uint16_t*>(&wv);
    uint4 o;
    uint16_t* oh = reinterpret_cast<uint16_t*>(&o);
#pragma unroll
    for (int i = 0; i < VEC; ++i) oh[i] = f32_to_bf16(bf16_to_f32(wh[i]) * (v[j][i] * rstd));
    *reinterpret_cast<uint4*>(y + row * d + c) = o;
  }
}

// x, y: [T, H, D] bf16 contiguous; positions [T] int64; freqs [D/2] fp32.
// interleaved: pairs (2i, 2i+1) (MLA); otherwise (i, i + D/2) (the indexer,
// SPEC §3 — mixing the two is the bug the 2025-11-17 release fixed).
extern "C" __global__ void __launch_bounds__(256) rope_bf16(
    const __nv_bfloat16* __restrict__ x, const long long* __restrict__ positions, const float* __restrict__ freqs,
    __nv_bfloat16* __restrict__ y, long long t_len, int h, int d, int interleaved) {
  const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  const int half = d / 2;
  if (pair >= t_len * h * half) return;
  const int i = (int)(pair % half);
  const long long th = pair / half, t = th / h;
  const long long base = th * d;
  const int i0 = interleaved ? 2 * i : i, i1 = interleaved ? 2 * i + 1 : i + half;
  float s, c;
  sincosf((float)positions[t] * freqs[i], &s, &c);
  const float a = bf16_to_f32(reinterpret_cast<const uint16_t*>(x)[base + i0]);
  const float b = bf16_to_f32(reinterpret_cast<const uint16_t*>(x)[base + i1]);
  reinterpret_cast<uint16_t*>(y)[base + i0] = f32_to_bf16(a * c - b * s);
  reinterpret_cast<uint16_t*>(y)[base + i1] = f32_to_bf16(a * s + b * c);
}
