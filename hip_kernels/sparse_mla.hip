// Sparse MLA (SPEC §6), absorbed form: d_qk = 576 (512 latent + 64 rope), d_v = 512,
// one shared KV head. Prefill reads bf16 KV rows [S, 576]; decode reads the
// 656-byte FP8 cache (mla_cache.h) through flat slot ids (block * BS + offset).
//
// Work split: a workgroup takes one query token and 16 heads (one MFMA row
// tile), and walks the token's index list in tiles of NK keys. Per tile:
//   1. gather the NK named KV rows into LDS as bf16 (decode dequantizes:
//      e4m3 x 2^k is exact in bf16). An invalid index (-1, >= S) is never read:
//      its LDS row is zero-filled and its score skipped, so a NaN-filled unused
//      slot cannot turn p = 0 into NaN (SPEC §10);
//   2. S = Q K^T with v_mfma_f32_16x16x16_bf16 (wave w scores keys 16w..16w+15;
//      36 k-steps over the 576 dims);
//   3. the tile's softmax state (max, sum) is merged into the running one with
//      softmax_merge (softmax.h, the same code the host check runs), which gives
//      the accumulator's rescale and the tile's weight; P is rounded to bf16
//      for the value product, as FlashMLA does;
//   4. O += P V with the same MFMA, wave w owning 512 / waves output columns.
//
// LDS decides the tile: Q (16 x 576 bf16) plus NK KV rows, rows padded 576 -> 580
// elements so the 16 rows one operand read touches land on distinct bank pairs.
// NK = 64 needs 99 KiB: fine on gfx950 (160 KiB), beyond gfx942's 64 KiB; the
// NK = 32 variant (59 KiB, 2 waves) is the one gfx942 launches. Both are built
// for both targets so the build report shows the limit.
// Not done here: split-KV over the index list (decode with few tokens leaves
// most CUs idle; FlashMLA splits and merges partials — softmax_merge is the merge).
#include "mfma.h"
#include "mla_cache.h"
#include "softmax.h"

#define DQK 576
#define DV 512
#define HT 16            // heads per workgroup: one MFMA row tile
#define ROW 580          // padded LDS row, in bf16 elements

template <int NK, bool CACHE>
__attribute__((device)) static inline void sparse_mla(const uint16_t* __restrict__ q, const uint8_t* __restrict__ kv,
                                                      const int* __restrict__ indices, long n_slots, int H, int K, float sm_scale,
                                                      uint16_t* __restrict__ out, float* __restrict__ lse, float* __restrict__ maxl,
                                                      int s_q) {
  constexpr int WAVES = NK / 16, THREADS = WAVES * DSP_WAVE, COLS = DV / WAVES;
  DSP_SHARED uint16_t qs[HT * ROW];
  DSP_SHARED uint16_t ks[NK * ROW];
  DSP_SHARED float sc[HT * NK];
  DSP_SHARED uint16_t pb[HT * NK];
  DSP_SHARED int valid[NK];
  DSP_SHARED float alpha[HT], run_m[HT], run_l[HT], run_max[HT];
  const long tok = bid_x();
  const int h0 = bid_y() * HT;
  const int t = tid(), lane = lane_id(), wave = t >> 6;

  for (int i = t; i < HT * DQK; i += THREADS) {
    int h = i / DQK, d = i % DQK;
    qs[h * ROW + d] = h0 + h < H ? q[(tok * H + h0 + h) * DQK + d] : 0;
  }
  if (t < HT) { run_m[t] = -__builtin_inff(); run_l[t] = 0.0f; run_max[t] = -__builtin_inff(); }
  f32x4 acc[COLS / 16] = {};

  for (int c0 = 0; c0 < K; c0 += NK) {
    // 1. gather
    if (t < NK) {
      int c = c0 + t;
      int s = c < K ? indices[tok * K + c] : -1;
      valid[t] = (s >= 0 && s < n_slots) ? s : -1;
    }
    barrier();
    for (int i = t; i < NK * DQK; i += THREADS) {
      int j = i / DQK, d = i % DQK, s = valid[j];
      uint16_t v = 0;
      if (s >= 0) {
        if (CACHE) v = f32_to_bf16(mla_row_value<DSP_FMT>(kv + (long)s * MLA_ROW, d));
        else v = ((const uint16_t*)kv)[(long)s * DQK + d];
      }
      ks[j * ROW + d] = v;
    }
    barrier();
    // 2. scores: wave w, keys 16w .. 16w + 15
    {
      f32x4 sacc = {};
      for (int d0 = 0; d0 < DQK; d0 += 16) {
        bf16x4 a = *(const bf16x4*)(qs + (lane % 16) * ROW + d0 + 4 * (lane / 16));
        bf16x4 b = *(const bf16x4*)(ks + (16 * wave + lane % 16) * ROW + d0 + 4 * (lane / 16));
        sacc = mfma_bf16(a, b, sacc);
      }
      for (int i = 0; i < 4; ++i) sc[(4 * (lane / 16) + i) * NK + 16 * wave + lane % 16] = sacc[i] * sm_scale;
    }
    barrier();
    // 3. softmax: one thread per head row (16 rows, NK values each)
    if (t < HT) {
      SoftmaxState tile = softmax_empty();
      float mx = run_max[t];
      for (int j = 0; j < NK; ++j)
        if (valid[j] >= 0) {
          float x = sc[t * NK + j];
          tile.m = (is_nan(x) || x > tile.m) ? x : tile.m;
        }
      for (int j = 0; j < NK; ++j)
        if (valid[j] >= 0) tile.l += __builtin_expf(sc[t * NK + j] - tile.m);
      mx = (is_nan(tile.m) || tile.m > mx) ? tile.m : mx;
      float wa, wb;
      SoftmaxState merged = softmax_merge(SoftmaxState{run_m[t], run_l[t]}, tile, &wa, &wb);
      for (int j = 0; j < NK; ++j)
        pb[t * NK + j] = valid[j] >= 0 ? f32_to_bf16(__builtin_expf(sc[t * NK + j] - tile.m) * wb) : 0;
      alpha[t] = wa;
      run_m[t] = merged.m; run_l[t] = merged.l; run_max[t] = mx;
    }
    barrier();
    // 4. O = O * alpha + P V: wave w owns columns COLS * w ..
    float al[4];
    for (int i = 0; i < 4; ++i) al[i] = alpha[4 * (lane / 16) + i];
#pragma unroll
    for (int n = 0; n < COLS / 16; ++n) {  // unrolled: acc must stay in registers, not scratch
      f32x4 o = acc[n];
      for (int i = 0; i < 4; ++i) o[i] *= al[i];
      const int col = COLS * wave + 16 * n + lane % 16;
      for (int k0 = 0; k0 < NK; k0 += 16) {
        bf16x4 a = *(const bf16x4*)(pb + (lane % 16) * NK + k0 + 4 * (lane / 16));
        bf16x4 b;
        for (int j = 0; j < 4; ++j) b[j] = (short)ks[(k0 + 4 * (lane / 16) + j) * ROW + col];
        o = mfma_bf16(a, b, o);
      }
      acc[n] = o;
    }
    barrier();  // the next tile overwrites ks, sc, pb
  }
  // out = O / l; a row that saw no valid key: out 0, lse -inf, max -inf
#pragma unroll
  for (int n = 0; n < COLS / 16; ++n)
    for (int i = 0; i < 4; ++i) {
      int h = 4 * (lane / 16) + i, col = COLS * wave + 16 * n + lane % 16;
      float l = run_l[h];
      if (h0 + h < H) out[(tok * H + h0 + h) * DV + col] = f32_to_bf16(l > 0.0f || is_nan(l) ? acc[n][i] / l : 0.0f);
    }
  if (t < HT && h0 + t < H) {
    float v = softmax_lse(SoftmaxState{run_m[t], run_l[t]});
    long at = s_q > 0 ? ((tok / s_q) * H + h0 + t) * s_q + tok % s_q : tok * H + h0 + t;  // decode: lse [B, H, s_q]
    lse[at] = v;
    maxl[tok * H + h0 + t] = run_max[t];
  }
}

#define PREFILL_ARGS const uint16_t *q, const uint16_t *kv, const int *indices, long S, int H, int K, float sm_scale, \
                     uint16_t *out, float *lse, float *maxl
#define DECODE_ARGS const uint16_t *q, const uint8_t *cache, const int *indices, long n_slots, int H, int K, float sm_scale, \
                    uint16_t *out, float *lse, float *maxl, int s_q

// The 64-key tile exists only where it fits: clang rejects it for gfx942 outright
// ("local memory (99456) exceeds limit (65536)").
#if DSP_LDS_BYTES >= 99456
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256))) dsp_sparse_mla_prefill(PREFILL_ARGS) {
  sparse_mla<64, false>(q, (const uint8_t*)kv, indices, S, H, K, sm_scale, out, lse, maxl, 0);
}
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256))) dsp_sparse_mla_decode(DECODE_ARGS) {
  sparse_mla<64, true>(q, cache, indices, n_slots, H, K, sm_scale, out, lse, maxl, s_q);
}
#endif
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(128, 128))) dsp_sparse_mla_prefill_nk32(PREFILL_ARGS) {
  sparse_mla<32, false>(q, (const uint8_t*)kv, indices, S, H, K, sm_scale, out, lse, maxl, 0);
}
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(128, 128))) dsp_sparse_mla_decode_nk32(DECODE_ARGS) {
  sparse_mla<32, true>(q, cache, indices, n_slots, H, K, sm_scale, out, lse, maxl, s_q);
}

// mla_cache_pack on the device: one wave per token; lane l quantizes latent
// elements 8l .. 8l+7 (one 16-byte load), so a 128-tile is 16 lanes and its amax a
// 4-step ds_bpermute reduction; the 656-byte row is written as 8-byte latent
// chunks, one scale per tile and one bf16 rope value per lane.
DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_mla_cache_pack(const uint16_t* __restrict__ kv, long n, uint8_t* __restrict__ cache) {
  long tok = (long)bid_x() * 4 + (tid() >> 6);
  if (tok >= n) return;
  const int lane = lane_id();
  const uint16_t* row = kv + tok * DQK;
  uint8_t* o = cache + tok * MLA_ROW;
  typedef uint32_t u32x4 __attribute__((ext_vector_type(4)));
  typedef uint32_t u32x2 __attribute__((ext_vector_type(2)));
  const u32x4 raw = ((const u32x4*)row)[lane];  // row is 1152 B, so 16-byte aligned
  float v[8];
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = bf16_to_f32((uint16_t)raw[i]);
    v[2 * i + 1] = bf16_to_f32((uint16_t)(raw[i] >> 16));
  }
  float m = 0.0f;
  for (int i = 0; i < 8; ++i) m = amax_step(m, v[i]);
  for (int k = 8; k > 0; k >>= 1) { float x = shfl_xor(m, k); m = (x > m || x != x) ? x : m; }  // the tile's 16 lanes
  const float s = group_scale<DSP_FMT>(m, true);
  u32x2 packed = {fp8_encode4<DSP_FMT>(v[0] / s, v[1] / s, v[2] / s, v[3] / s),
                  fp8_encode4<DSP_FMT>(v[4] / s, v[5] / s, v[6] / s, v[7] / s)};
  ((u32x2*)o)[lane] = packed;
  if ((lane & 15) == 0) ((float*)(o + MLA_SCALE_OFF))[lane / 16] = s;
  ((uint16_t*)(o + MLA_ROPE_OFF))[lane] = row[MLA_LATENT + lane];
}
