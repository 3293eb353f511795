// moe_gate (SPEC §7): scores = sigmoid(x W^T) (or softmax), selection on
// scores + bias, group-limited top-k, weights from the unbiased scores.
//
// One 256-thread block per token. The [E, D] = [256, 7168] router GEMV is the
// only real work (3.7 MB of bf16 weights per step, shared by all tokens
// through L2); each warp owns E/8 experts and each lane strides over D with
// 16-byte loads, fp32 accumulation. The selection (8 groups, top-4 groups,
// top-8 experts) is a few hundred comparisons: one warp does it with shuffle
// arg-max reductions, lower expert id winning ties, as torch.topk's usual
// order (any tied choice is correct, SPEC §7 cases "ties").
// Not a tensor-core kernel: at decode T is 1..64 rows, far below a wgmma tile.
#include <cuda_bf16.h>
#include "include/dsport/common.cuh"

using namespace dsport;

constexpr int GATE_THREADS = 256, GATE_MAX_E = 512, GATE_MAX_K = 16;

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
  }
}

// x [T, D] bf16 (row stride x_stride), w [E, D] bf16 contiguous, bias [E] fp32 or null;
// weights_out [T, topk] fp32, ids_out [T, topk] int32. softmax: 0 sigmoid, 1 softmax.
extern "C" __global__ void __launch_bounds__(GATE_THREADS) moe_gate_bf16(
    const __nv_bfloat16* __restrict__ x, long long x_stride, const __nv_bfloat16* __restrict__ w,
    const float* __restrict__ bias, int d, int e, int n_group, int topk_group, int topk, float route_scale,
    int softmax, float* __restrict__ weights_out, int* __restrict__ ids_out) {
  __shared__ float score[GATE_MAX_E], sel[GATE_MAX_E];
  const long long t = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = GATE_THREADS / 32;
  const uint16_t* xr = reinterpret_cast<const uint16_t*>(x) + t * x_stride;
  for (int ex = warp; ex < e; ex += nwarps) {
    const uint16_t* wr = reinterpret_cast<const uint16_t*>(w) + (long long)ex * d;
    float acc = 0.0f;
    for (int c = lane; c < d; c += 32) acc += bf16_to_f32(xr[c]) * bf16_to_f32(wr[c]);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) score[ex] = acc;
  }
  __syncthreads();
  if (warp != 0) return;
  if (softmax) {
    float m = -INFINITY;
    for (int i = lane; i < e; i += 32) m = fmaxf(m, score[i]);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    float s = 0.0f;
    for (int i = lane; i < e; i += 32) { score[i] = expf(score[i] - m); s += score[i]; }
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    __syncwarp();
    for (int i = lane; i < e; i += 32) score[i] /= s;
  } else {
    for (int i = lane; i < e; i += 32) score[i] = 1.0f / (1.0f + expf(-score[i]));
  }
  __syncwarp();
  for (int i = lane; i < e; i += 32) sel[i] = score[i] + (bias ? bias[i] : 0.0f);  // bias: selection only
  __syncwarp();
  const int per = e / n_group;
  if (n_group > 1) {
    // group score: sum of the top-2 biased scores (with bias), the max without — DeepSeek's Gate
    float gs = -INFINITY;
    if (lane < n_group) {
      float a = -INFINITY, b = -INFINITY;
      for (int i = lane * per; i < (lane + 1) * per; ++i) {
        const float v = sel[i];
        if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
      }
      gs = bias ? a + b : a;
    }
    uint32_t keep = 0;  // bitmask of kept groups (n_group <= 32)
    for (int r = 0; r < topk_group; ++r) {
      float v = (lane >= n_group || ((keep >> lane) & 1u)) ? -INFINITY : gs;
      int i = lane < n_group && !((keep >> lane) & 1u) ? lane : 1 << 30;
      warp_argmax(v, i);
      if (i < n_group) keep |= 1u << i;
    }
    __syncwarp();
    for (int i = lane; i < e; i += 32)
      if (!((keep >> (i / per)) & 1u)) sel[i] = -INFINITY;
    __syncwarp();
  }
  float wsum = 0.0f;
  int my_id = -1;
  float my_w = 0.0f;
  for (int r = 0; r < topk; ++r) {
    float v = -INFINITY;
    int i = 1 << 30;
    for (int j = lane; j < e; j += 32)
      if (sel[j] > v || (sel[j] == v && j < i)) { v = sel[j]; i = j; }
    warp_argmax(v, i);
    if (i >= e) break;  // nothing selectable left (all NaN): fewer ids, never an out-of-range read
    if (lane == r) { my_id = i; my_w = score[i]; }
    wsum += score[i];
    __syncwarp();
    // taken: a NaN never compares greater or equal, so it is never chosen again
    if (lane == 0) sel[i] = __int_as_float(0x7fc00000);
    __syncwarp();
  }
  if (lane < topk) {
    ids_out[t * topk + lane] = my_id;
    weights_out[t * topk + lane] = my_w / wsum * route_scale;
  }
}
