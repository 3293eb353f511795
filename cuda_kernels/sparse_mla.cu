// sparse_mla_decode and sparse_mla_prefill (SPEC §6, FlashMLA's sparse
// contracts): per (batch, query) the top-k cache rows named by indices
// (block * block_size + offset; -1 or past the cache = none) are attended by
// every head: out [B, SQ, H, 512], lse [B, H, SQ]. The cache is the 656-byte
// FP8 row (include/dsport/mla_cache.cuh) or a bf16 [.., 576] row. Prefill is
// the same computation with B = T, SQ = 1 and the bf16 kv as one page, plus
// max_logits [T, H].
//
// Mapping: one CTA of 8 warps per (batch, query, group of 8 heads), one warp
// per head. Keys stream through shared memory in tiles of 32 (a lane per key
// for the scores, then a lane per 16 output dims for P.V), dequantized on the
// way in: an e4m3 value times its power-of-two tile scale is exact in bf16,
// so the smem tile is bf16 with no rounding at all. Rows are padded to 578
// bf16 (289 words) so the 32 lanes reading 32 different rows hit 32 banks.
// The online softmax is include/dsport/softmax.cuh, the code the host check
// holds against the reference; lse comes out in natural log.
//
// SPEC §10: an invalid index is never dereferenced — its smem row is zeroed,
// its score is not computed, and the P.V loop skips it (0 * NaN would be NaN).
// A row with no valid index gives out = 0, lse = -inf.
//
// Hardware limit, stated plainly: this is a CUDA-core kernel. Decode with 64
// or 128 heads over 2048 keys does ~216 FLOP per byte of cache it reads, far
// above the CUDA cores' balance point on H200 (~14 FLOP/B): the 50%-of-HBM
// goal needs the two GEMMs on wgmma (heads as M, FlashMLA's design). This
// kernel is the readable, any-head-count, both-FP8-format path and the
// fallback where FlashMLA does not apply (e4m3fnuz bytes, bf16 cache, h_q not
// 64/128 without padding).
#include <cuda_bf16.h>
#include "include/dsport/mla_cache.cuh"
#include "include/dsport/softmax.cuh"

using namespace dsport;

constexpr int DEC_HEADS = 8, DEC_TILE = 32, DEC_DQK = 576, DEC_DV = 512, DEC_PAD = 578, DEC_THREADS = 256;

template <bool FP8, Fp8Kind K>
__device__ __forceinline__ void load_tile(uint16_t (*rows)[DEC_PAD], const int* valid, const long long* where,
                                          const uint8_t* __restrict__ cache) {
  // 16-byte chunks of each row: FP8 latent (32 chunks) + rope (8 chunks); bf16 rows: 72 chunks
  constexpr int CHUNKS = FP8 ? 40 : DEC_DQK * 2 / 16;
  for (int c = threadIdx.x; c < DEC_TILE * CHUNKS; c += DEC_THREADS) {
    const int key = c / CHUNKS, part = c % CHUNKS;
    uint16_t* dst = rows[key];
    const bool latent = FP8 && part < 32;  // 16 FP8 bytes -> 16 dims; otherwise 8 bf16 -> 8 dims
    const int d0 = latent ? part * 16 : FP8 ? MLA_LATENT + (part - 32) * 8 : part * 8;
    if (!valid[key]) {  // never read: zeros, and the loops below skip the key anyway
      for (int i = 0; i < (latent ? 16 : 8); ++i) dst[d0 + i] = 0;
      continue;
    }
    const uint8_t* row = cache + where[key];
    if (latent) {
      const float s = mla_row_scale(row, part / 8);
      const uint4 raw = *reinterpret_cast<const uint4*>(row + part * 16);
      const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
#pragma unroll
      for (int i = 0; i < 16; ++i) dst[d0 + i] = f32_to_bf16(fp8_decode(b[i], K) * s);  // exact: see above
    } else {
      const int off = FP8 ? MLA_ROPE_OFF + (part - 32) * 16 : part * 16;
      const uint4 raw = *reinterpret_cast<const uint4*>(row + off);
      const uint16_t* h = reinterpret_cast<const uint16_t*>(&raw);
#pragma unroll
      for (int i = 0; i < 8; ++i) dst[d0 + i] = h[i];
    }
  }
}

// q [B, SQ, H, 576] bf16 contiguous; cache: NB pages of `page_stride` bytes, each
// block_size rows of `row_bytes` (656 FP8, or 1152 for bf16 rows); indices
// [B, SQ, topk] int32; out [B, SQ, H, 512] bf16; lse [B, H, SQ] fp32.
// Grid (ceil(H / 8), SQ, B), block 256.
template <bool FP8, Fp8Kind K>
__device__ void sparse_mla_decode_impl(const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache,
                                       long long page_stride, int row_bytes, int block_size, const int* __restrict__ indices,
                                       __nv_bfloat16* __restrict__ out, float* __restrict__ lse,
                                       float* __restrict__ max_logits, long long n_rows, int h, int s_q, int topk,
                                       float sm_scale) {
  __shared__ __align__(16) uint16_t rows[DEC_TILE][DEC_PAD];
  __shared__ uint16_t qs[DEC_HEADS][DEC_DQK];
  __shared__ int valid[DEC_TILE];
  __shared__ long long where[DEC_TILE];
  const int b = blockIdx.z, sq = blockIdx.y, h0 = blockIdx.x * DEC_HEADS;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, head = h0 + warp;
  const long long bq = (long long)b * s_q + sq;
  for (int i = threadIdx.x; i < DEC_HEADS * DEC_DQK; i += DEC_THREADS) {
    const int hh = h0 + i / DEC_DQK;
    qs[i / DEC_DQK][i % DEC_DQK] = hh < h ? reinterpret_cast<const uint16_t*>(q)[(bq * h + hh) * DEC_DQK + i % DEC_DQK] : 0;
  }
  const float scale2 = sm_scale * LOG2E;  // scores in the log2 domain: one exp2 each
  SoftmaxState st = softmax_empty();
  float acc[DEC_DV / 32];  // this lane's 16 output dims: lane + 32 * j
#pragma unroll
  for (int j = 0; j < DEC_DV / 32; ++j) acc[j] = 0.0f;
  const int* idx = indices + bq * topk;
  for (int t0 = 0; t0 < topk; t0 += DEC_TILE) {
    __syncthreads();  // the previous tile is no longer read
    if (threadIdx.x < DEC_TILE) {
      const int i = t0 + threadIdx.x < topk ? idx[t0 + threadIdx.x] : -1;
      valid[threadIdx.x] = i >= 0 && i < n_rows;
      where[threadIdx.x] = valid[threadIdx.x] ? (long long)(i / block_size) * page_stride + (long long)(i % block_size) * row_bytes : 0;
    }
    __syncthreads();
    load_tile<FP8, K>(rows, valid, where, cache);
    __syncthreads();
    if (head >= h) continue;  // a warp past the last head still joins every barrier
    // scores: lane = key
    float s = -INFINITY;
    if (valid[lane]) {
      float dot = 0.0f;
      const uint32_t* kr = reinterpret_cast<const uint32_t*>(rows[lane]);
      const uint32_t* qr = reinterpret_cast<const uint32_t*>(qs[warp]);
      for (int d = 0; d < DEC_DQK / 2; ++d) {
        const uint32_t kk = kr[d], qq = qr[d];  // qr[d] is the same word for every lane: a broadcast
        dot += bf16_to_f32((uint16_t)kk) * bf16_to_f32((uint16_t)qq) + bf16_to_f32((uint16_t)(kk >> 16)) * bf16_to_f32((uint16_t)(qq >> 16));
      }
      s = dot * scale2;
    }
    SoftmaxState ts{s, 0.0f};
    // a NaN-keeping max: fmaxf would drop a NaN score and, if every score were NaN, turn the row
    // into an "empty" one (out 0, lse -inf) instead of NaN (SPEC §10)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float o = __shfl_xor_sync(0xffffffffu, ts.m, off);
      ts.m = (o > ts.m || o != o) ? o : ts.m;
    }
    float p = (valid[lane] && ts.m != -INFINITY) ? exp2f(s - ts.m) : 0.0f;
    ts.l = p;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ts.l += __shfl_xor_sync(0xffffffffu, ts.l, off);
    float part[DEC_DV / 32];
#pragma unroll
    for (int j = 0; j < DEC_DV / 32; ++j) part[j] = 0.0f;
    for (int key = 0; key < DEC_TILE; ++key) {
      if (!valid[key]) continue;  // uniform across the warp: masked rows never enter the product
      const float pk = __shfl_sync(0xffffffffu, p, key);
#pragma unroll
      for (int j = 0; j < DEC_DV / 32; ++j) part[j] += pk * bf16_to_f32(rows[key][lane + 32 * j]);
    }
    float ca, cb;
    st = softmax_merge(st, ts, &ca, &cb);
#pragma unroll
    for (int j = 0; j < DEC_DV / 32; ++j) acc[j] = (ca == 0.0f ? 0.0f : acc[j] * ca) + (cb == 0.0f ? 0.0f : part[j] * cb);
  }
  if (head >= h) return;
  const float inv = softmax_inv_l(st);
  uint16_t* o = reinterpret_cast<uint16_t*>(out) + (bq * h + head) * DEC_DV;
#pragma unroll
  for (int j = 0; j < DEC_DV / 32; ++j) o[lane + 32 * j] = f32_to_bf16(acc[j] * inv);
  if (lane == 0) {
    lse[((long long)b * h + head) * s_q + sq] = softmax_lse(st);
    if (max_logits) max_logits[bq * h + head] = st.m * LN2;  // the running max, back in natural units
  }
}

#define DS_SPARSE_DECODE(NAME, FP8, K)                                                                          \
  extern "C" __global__ void __launch_bounds__(DEC_THREADS) NAME(                                                \
      const __nv_bfloat16* __restrict__ q, const uint8_t* __restrict__ cache, long long page_stride, int row_bytes, \
      int block_size, const int* __restrict__ indices, __nv_bfloat16* __restrict__ out, float* __restrict__ lse,     \
      float* __restrict__ max_logits, long long n_rows, int h, int s_q, int topk, float sm_scale) {              \
    sparse_mla_decode_impl<FP8, K>(q, cache, page_stride, row_bytes, block_size, indices, out, lse, max_logits,  \
                                   n_rows, h, s_q, topk, sm_scale);                                              \
  }

DS_SPARSE_DECODE(sparse_mla_fp8_e4m3fn, true, E4M3FN)
DS_SPARSE_DECODE(sparse_mla_fp8_e4m3fnuz, true, E4M3FNUZ)
DS_SPARSE_DECODE(sparse_mla_bf16, false, E4M3FN)
