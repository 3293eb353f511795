// indexer_logits (SPEC §4, DeepGEMM fp8_mqa_logits-like): for query t and key s
// in [ks[t], ke[t]): logits[t, s] = k_scale[s] * sum_h w[t, h] * relu(q[t, h] . k[s]),
// -inf outside the window. q [T, H, 128], k [S, 128] e4m3fn; w folds every
// other factor (64^-0.5, 128^-0.5, q's scale), as the spec's weights do.
//
// Mapping: one CTA (one warpgroup) per (query t, block of 128 keys). The
// heads are the M side of an m64n128k32 FP8 wgmma — a query's 64 heads
// against 128 keys is exactly one tile, 4 k32 steps over D = 128 — so the
// head-sum becomes a reduction over accumulator rows: ReLU and the weight on
// the CUDA cores, a 3-step shuffle across the lanes holding the same columns,
// then 4 warps through shared memory. H < 64 (TP-sharded 32/16/8) fills the
// spare rows with zeros (zero-filled cp.async, zero weight), H = 128 runs two
// head tiles into the same column sums.
//
// Causal bounds and SPEC §10: a key block entirely outside the window is
// written -inf without loading a byte of k; inside a partial block, rows
// outside the window are zero-filled in shared memory instead of read.
//
// Not yet the production shape: every CTA reloads its query's 8 KB of q and
// each key block is loaded once per query. DeepGEMM keeps a key block
// resident and streams the queries past it (K reuse across T); that, TMA and
// the 128-byte swizzle are the steps to measure on an H200 first.
#include <stdint.h>
#include "include/dsport/wgmma.cuh"

using namespace dsport;

constexpr int IDX_D = 128, IDX_BN = 128, IDX_HEADS_TILE = 64, IDX_THREADS = 128;

extern "C" __global__ void __launch_bounds__(IDX_THREADS) indexer_logits_e4m3(
    const uint8_t* __restrict__ q, const uint8_t* __restrict__ k, const float* __restrict__ k_scale,
    const float* __restrict__ weights, const int* __restrict__ ks, const int* __restrict__ ke, float* __restrict__ logits,
    int h, int s_len) {
  __shared__ __align__(1024) uint8_t smem_q[IDX_HEADS_TILE * IDX_D];
  __shared__ __align__(1024) uint8_t smem_k[IDX_BN * IDX_D];
  __shared__ float red[4][IDX_BN];
  const long long t = blockIdx.y;
  const int s0 = blockIdx.x * IDX_BN;
  const int lo = ks[t], hi = ke[t] < s_len ? ke[t] : s_len;
  float* out = logits + t * (long long)s_len;
  const int col = s0 + threadIdx.x;  // one output column per thread in the epilogue
  if (hi <= s0 || lo >= s0 + IDX_BN) {  // the whole block is outside the window: nothing is read
    if (col < s_len) out[col] = -INFINITY;
    return;
  }
  // keys of this block (16 B per cp.async, 8 consecutive threads per 128-byte row)
#pragma unroll
  for (int it = 0; it < IDX_BN * IDX_D / 16 / IDX_THREADS; ++it) {
    const int c = threadIdx.x + it * IDX_THREADS, row = c >> 3, kb = (c & 7) * 16;
    const int s = s0 + row;
    const bool ok = s >= lo && s < hi;
    cp_async16(smem_k + core_offset(row, kb), k + (long long)(ok ? s : 0) * IDX_D + kb, ok);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = warp * 16 + (lane >> 2);
  float colsum[32];  // this thread's 32 columns: 8 * j + 2 * (lane & 3) + e, j < 16, e < 2
#pragma unroll
  for (int i = 0; i < 32; ++i) colsum[i] = 0.0f;
  float acc[64];
  for (int h0 = 0; h0 < h; h0 += IDX_HEADS_TILE) {
#pragma unroll
    for (int it = 0; it < IDX_HEADS_TILE * IDX_D / 16 / IDX_THREADS; ++it) {
      const int c = threadIdx.x + it * IDX_THREADS, row = c >> 3, kb = (c & 7) * 16;
      const bool ok = h0 + row < h;
      cp_async16(smem_q + core_offset(row, kb), q + (t * h + (ok ? h0 + row : 0)) * IDX_D + kb, ok);
    }
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < IDX_D / 32; ++j)
      wgmma_m64n128k32_e4m3(acc, smem_desc(smem_q + j * 2 * CORE), smem_desc(smem_k + j * 2 * CORE), j);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    const float w0 = h0 + r0 < h ? weights[t * h + h0 + r0] : 0.0f;
    const float w1 = h0 + r0 + 8 < h ? weights[t * h + h0 + r0 + 8] : 0.0f;
    // relu(x) written as a select so NaN propagates (fmaxf(NaN, 0) would be 0): SPEC §10
#pragma unroll
    for (int i = 0; i < 64; i += 4) {
      const int c = (i >> 2) * 2;
      colsum[c] += (acc[i] > 0.0f || acc[i] != acc[i] ? acc[i] : 0.0f) * w0 +
                   (acc[i + 2] > 0.0f || acc[i + 2] != acc[i + 2] ? acc[i + 2] : 0.0f) * w1;
      colsum[c + 1] += (acc[i + 1] > 0.0f || acc[i + 1] != acc[i + 1] ? acc[i + 1] : 0.0f) * w0 +
                       (acc[i + 3] > 0.0f || acc[i + 3] != acc[i + 3] ? acc[i + 3] : 0.0f) * w1;
    }
    __syncthreads();  // smem_q is refilled by the next head tile
  }
  // lanes with the same (lane & 3) hold the same columns for different rows
#pragma unroll
  for (int i = 0; i < 32; ++i) {
    colsum[i] += __shfl_xor_sync(0xffffffffu, colsum[i], 4);
    colsum[i] += __shfl_xor_sync(0xffffffffu, colsum[i], 8);
    colsum[i] += __shfl_xor_sync(0xffffffffu, colsum[i], 16);
  }
  if (lane < 4) {
#pragma unroll
    for (int i = 0; i < 32; ++i) red[warp][8 * (i >> 1) + 2 * lane + (i & 1)] = colsum[i];
  }
  __syncthreads();
  if (col < s_len) {
    const bool inside = col >= lo && col < hi;
    const float v = red[0][threadIdx.x] + red[1][threadIdx.x] + red[2][threadIdx.x] + red[3][threadIdx.x];
    out[col] = inside ? v * k_scale[col] : -INFINITY;
  }
}
