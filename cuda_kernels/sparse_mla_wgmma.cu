// sparse_mla_decode / sparse_mla_prefill on Hopper's tensor cores (sm_90a, bf16
// wgmma with fp32 accumulation): the same contract, cache rows and online
// softmax as sparse_mla.cu, for head counts that are a multiple of 64 (the M
// of a wgmma; V3.2's 128 heads on one or two ranks). Other head counts take
// the CUDA-core kernel (backends/cuda/launch.py chooses).
//
// Why tensor cores: one query's 64 heads against 64 keys is 64 x 64 x (576 +
// 512) x 2 = 8.9 MFLOP per 42 KB of FP8 cache, ~210 FLOP per byte — H200's
// bf16 tensor cores balance at ~200 FLOP/B, its CUDA cores at ~14, so only the
// wgmma path can keep HBM busy (FlashMLA's design: heads as M).
//
// Mapping: one CTA of two warpgroups per (batch, query, 64 heads); keys in
// tiles of 64. Per tile:
//  1. the 64 cache rows named by the indices are dequantized into one bf16
//     key tile in shared memory, exactly as sparse_mla.cu does (e4m3 times its
//     power-of-two tile scale is exact in bf16); an invalid index is zeros and
//     never dereferenced (SPEC §10);
//  2. S = Q K^T: warpgroup w computes the 64 heads x keys 32w..32w+31 with 36
//     m64n32k16 steps over d = 576, Q and K both K-major from shared memory;
//  3. online softmax: the two warpgroups' tile row maxima meet in shared
//     memory, each row's new running max rescales O and l, and P = exp2(s -
//     m_new) is written to shared memory as bf16 (include/dsport/softmax.cuh,
//     softmax_step: the tile factor is folded into P because P feeds the
//     tensor core directly);
//  4. O += P V: warpgroup w owns value dims 256w..256w+255, 4 m64n256k16 steps
//     over the 64 keys, P K-major and V MN-major — V is the first 512 dims of
//     the same key tile, read along its rows (imm-trans-b), no second copy.
// Each thread holds 128 fp32 accumulators of O (a 64 x 256 fragment) plus 16
// of S: that is why O is split over two warpgroups and not held by one.
//
// Shared memory (include/dsport/mla_tiles.cuh): 154 KiB, dynamic; one key tile
// only, so loading and computing do not overlap yet. A second tile would fit
// (226 of 227 KiB); that, TMA / cp.async of the raw FP8 bytes and a producer
// warp are the steps to measure first on an H200. Layout: no-swizzle core matrices (8 rows x 16 B), readable
// and directly described by wgmma descriptors; its bank conflicts on the
// dequantizing stores are the price, the 128-byte swizzle the fix.
//
// What the host check covers (tests/test_cuda_host.py): every offset of this
// file against the descriptor model, the accumulator fragment map, the smem
// budget, the softmax step with bf16 P. What only a GPU can check: that the
// descriptor model is the hardware's, the async-proxy fences and barriers,
// and the numbers themselves.
#include <cuda_bf16.h>
#include "include/dsport/mla_cache.cuh"
#include "include/dsport/mla_tiles.cuh"
#include "include/dsport/softmax.cuh"
#include "include/dsport/wgmma.cuh"

using namespace dsport;

__device__ __forceinline__ uint64_t desc(const uint8_t* tile, WgDesc d) {
  return desc_bits(static_cast<uint32_t>(__cvta_generic_to_shared(tile + d.start)), d.lbo, d.sbo);
}

__device__ __forceinline__ void proxy_fence() {
  // generic-proxy smem stores become visible to the tensor core's async proxy
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// The key tile: row `key` holds the 576 dims of one cache row as bf16, in core-matrix order.
template <bool FP8, Fp8Kind K>
__device__ __forceinline__ void load_key_tile(uint8_t* tile, const int* valid, const long long* where,
                                              const uint8_t* __restrict__ cache) {
  // work items: FP8 rows give 32 latent pieces (16 bytes -> 16 dims) + 8 rope pieces (8 bf16);
  // bf16 rows give 72 pieces of 8 dims. Each piece lands in one or two 16-byte core-matrix rows.
  constexpr int PIECES = FP8 ? 40 : WG_QK_ROW / 16;
  for (int c = threadIdx.x; c < WG_KEYS * PIECES; c += WG_THREADS) {
    const int key = c / PIECES, part = c % PIECES;
    const bool latent = FP8 && part < 32;
    const int d0 = latent ? part * 16 : FP8 ? MLA_LATENT + (part - 32) * 8 : part * 8;
    uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
    if (valid[key]) {
      const uint8_t* row = cache + where[key];
      if (latent) {
        const float s = mla_row_scale(row, part / 8);
        const uint4 raw = *reinterpret_cast<const uint4*>(row + part * 16);
        const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
        uint16_t* l16 = reinterpret_cast<uint16_t*>(&lo);
        uint16_t* h16 = reinterpret_cast<uint16_t*>(&hi);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          l16[i] = f32_to_bf16(fp8_decode(b[i], K) * s);  // exact: a power-of-two scale on 3 mantissa bits
          h16[i] = f32_to_bf16(fp8_decode(b[8 + i], K) * s);
        }
      } else {
        lo = *reinterpret_cast<const uint4*>(row + (FP8 ? MLA_ROPE_OFF + (part - 32) * 16 : part * 16));
      }
    }
    *reinterpret_cast<uint4*>(tile + tile_offset(key, d0 * 2, WG_QK_ROW)) = lo;
    if (latent) *reinterpret_cast<uint4*>(tile + tile_offset(key, d0 * 2 + 16, WG_QK_ROW)) = hi;
  }
}

// q [B, SQ, H, 576] bf16 contiguous, H % 64 == 0; cache, indices, out, lse, max_logits as in
// sparse_mla.cu. Grid (H / 64, SQ, B), block 256, dynamic smem WG_SMEM_BYTES.
template <bool FP8, Fp8Kind K>
__device__ void sparse_mla_wgmma_impl(const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache,
                                      long long page_stride, int row_bytes, int block_size, const int* __restrict__ indices,
                                      __nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                      float* __restrict__ max_logits, long long n_rows, int h, int s_q, int topk,
                                      float sm_scale) {
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* sq = smem + WG_Q_OFF;
  uint8_t* sk = smem + WG_K_OFF;
  uint8_t* sp = smem + WG_P_OFF;
  float* red_max = reinterpret_cast<float*>(smem + WG_MAX_OFF);  // [2][64]: each warpgroup's tile row maxima
  float* red_sum = reinterpret_cast<float*>(smem + WG_SUM_OFF);  // [2][64]: each warpgroup's tile row sums
  long long* where = reinterpret_cast<long long*>(smem + WG_WHERE_OFF);
  int* valid = reinterpret_cast<int*>(smem + WG_VALID_OFF);

  const int b = blockIdx.z, sqi = blockIdx.y, h0 = blockIdx.x * WG_HEADS;
  const int wg = threadIdx.x >> 7, t = threadIdx.x & 127, lane = threadIdx.x & 31;
  const long long bq = (long long)b * s_q + sqi;

  // q: 64 heads x 72 pieces of 16 bytes
  const uint4* qsrc = reinterpret_cast<const uint4*>(q + (bq * h + h0) * WG_DQK);
  for (int c = threadIdx.x; c < WG_HEADS * (WG_QK_ROW / 16); c += WG_THREADS)
    *reinterpret_cast<uint4*>(sq + tile_offset(c / (WG_QK_ROW / 16), (c % (WG_QK_ROW / 16)) * 16, WG_QK_ROW)) = qsrc[c];

  const float scale2 = sm_scale * LOG2E;  // log2 domain: one exp2 per score
  const int ra = acc_row(t, 0), rb = acc_row(t, 2);  // this thread's two rows (heads) of every fragment
  SoftmaxState st[2] = {softmax_empty(), softmax_empty()};
  float o[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) o[i] = 0.0f;
  const int* idx = indices + bq * topk;

  for (int t0 = 0; t0 < topk; t0 += WG_KEYS) {
    __syncthreads();  // the previous tile's K, P and row statistics are no longer read
    if (threadIdx.x < WG_KEYS) {
      const int i = t0 + threadIdx.x < topk ? idx[t0 + threadIdx.x] : -1;
      const int ok = i >= 0 && i < n_rows;
      valid[threadIdx.x] = ok;
      where[threadIdx.x] = ok ? (long long)(i / block_size) * page_stride + (long long)(i % block_size) * row_bytes : 0;
    }
    __syncthreads();
    load_key_tile<FP8, K>(sk, valid, where, cache);
    proxy_fence();
    __syncthreads();

    // 2. S = Q K^T for this warpgroup's 32 keys, 36 k16 steps over d = 576
    float s[16];
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll 4
    for (int ks = 0; ks < WG_DQK / 16; ++ks)
      wgmma_m64n32k16_bf16(s, desc(sq, qk_a_desc(ks)), desc(sk, qk_b_desc(wg, ks)), ks);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");

    // 3. online softmax. Masked keys never count: score -inf, p exactly 0 against a zero row.
    float m[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const int key = WG_KEYS_PER_WG * wg + acc_col(t, i);
      s[i] = valid[key] ? s[i] * scale2 : -INFINITY;
      m[(i >> 1) & 1] = nan_max(m[(i >> 1) & 1], s[i]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // the 4 lanes of a quad share a row
      m[r] = nan_max(m[r], __shfl_xor_sync(0xffffffffu, m[r], 1));
      m[r] = nan_max(m[r], __shfl_xor_sync(0xffffffffu, m[r], 2));
    }
    if ((lane & 3) == 0) { red_max[wg * WG_HEADS + ra] = m[0]; red_max[wg * WG_HEADS + rb] = m[1]; }
    __syncthreads();
    float ca[2], m_new[2], l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = r ? rb : ra;
      m_new[r] = softmax_step(st[r], nan_max(red_max[row], red_max[WG_HEADS + row]), &ca[r]);
    }
#pragma unroll
    for (int i = 0; i < 16; i += 2) {
      const int r = (i >> 1) & 1, key = WG_KEYS_PER_WG * wg + acc_col(t, i);
      const float p0 = (valid[key] && m_new[r] != -INFINITY) ? exp2f(s[i] - m_new[r]) : 0.0f;
      const float p1 = (valid[key + 1] && m_new[r] != -INFINITY) ? exp2f(s[i + 1] - m_new[r]) : 0.0f;
      l[r] += p0 + p1;
      const uint32_t pair = (uint32_t)f32_to_bf16(p0) | ((uint32_t)f32_to_bf16(p1) << 16);
      *reinterpret_cast<uint32_t*>(sp + tile_offset(acc_row(t, i), key * 2, WG_P_ROW)) = pair;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
      l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    if ((lane & 3) == 0) { red_sum[wg * WG_HEADS + ra] = l[0]; red_sum[wg * WG_HEADS + rb] = l[1]; }
#pragma unroll
    for (int i = 0; i < 128; ++i) {
      const float c = ca[(i >> 1) & 1];
      o[i] = c == 0.0f ? 0.0f : o[i] * c;  // 0 * inf would be NaN where nothing was accumulated yet
    }
    proxy_fence();
    __syncthreads();

    // 4. O += P V over the tile's 64 keys (4 k16 steps), this warpgroup's 256 value dims
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int ks = 0; ks < WG_KEYS / 16; ++ks)
      wgmma_m64n256k16_bf16_tb(o, desc(sp, pv_a_desc(ks)), desc(sk, pv_b_desc(wg, ks)), 1);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = r ? rb : ra;
      st[r].l = st[r].l * ca[r] + red_sum[row] + red_sum[WG_HEADS + row];
      st[r].m = m_new[r];
    }
  }

  const float inv[2] = {softmax_inv_l(st[0]), softmax_inv_l(st[1])};
#pragma unroll
  for (int i = 0; i < 128; i += 2) {
    const int r = (i >> 1) & 1;
    const long long head = h0 + acc_row(t, i);
    const int col = WG_DV_PER_WG * wg + acc_col(t, i);
    const uint32_t pair = (uint32_t)f32_to_bf16(o[i] * inv[r]) | ((uint32_t)f32_to_bf16(o[i + 1] * inv[r]) << 16);
    *reinterpret_cast<uint32_t*>(reinterpret_cast<uint16_t*>(out) + (bq * h + head) * WG_DV + col) = pair;
  }
  if (wg == 0 && (lane & 3) == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int head = h0 + (r ? rb : ra);
      lse[((long long)b * h + head) * s_q + sqi] = softmax_lse(st[r]);
      if (max_logits) max_logits[bq * h + head] = st[r].m * LN2;  // back in natural units
    }
  }
}

#define DS_SPARSE_WGMMA(NAME, FP8, K)                                                                           \
  extern "C" __global__ void __launch_bounds__(WG_THREADS, 1) NAME(                                            \
      const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache, long long page_stride, int row_bytes, \
      int block_size, const int* __restrict__ indices, __nv_bfloat16* __restrict__ out, float* __restrict__ lse,     \
      float* __restrict__ max_logits, long long n_rows, int h, int s_q, int topk, float sm_scale) {              \
    sparse_mla_wgmma_impl<FP8, K>(q, cache, page_stride, row_bytes, block_size, indices, out, lse, max_logits,   \
                                  n_rows, h, s_q, topk, sm_scale);                                               \
  }

DS_SPARSE_WGMMA(sparse_mla_wgmma_fp8_e4m3fn, true, E4M3FN)
DS_SPARSE_WGMMA(sparse_mla_wgmma_fp8_e4m3fnuz, true, E4M3FNUZ)
DS_SPARSE_WGMMA(sparse_mla_wgmma_bf16, false, E4M3FN)
