// The scalar building blocks of the sm_90a kernels, compiled by g++ into a CPU
// shared library so tests can hold them bit-exact against the reference. Only
// arithmetic is checked this way: thread mapping, shared memory, warp shuffles
// and wgmma fragments exist only in the .cu files and run only on a GPU.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <vector>
#include "include/dsport/fp8.cuh"
#include "include/dsport/mla_cache.cuh"
#include "include/dsport/mla_tiles.cuh"
#include "include/dsport/radix.cuh"
#include "include/dsport/softmax.cuh"

using namespace dsport;

extern "C" {

void ds_fp8_encode(const float* x, uint8_t* y, int64_t n, int kind) {
  for (int64_t i = 0; i < n; ++i) y[i] = fp8_encode(x[i], (Fp8Kind)kind);
}

void ds_fp8_decode(const uint8_t* y, float* x, int64_t n, int kind) {
  for (int64_t i = 0; i < n; ++i) x[i] = fp8_decode(y[i], (Fp8Kind)kind);
}

// act_quant over rows of n floats, groups of `block`: the per-group order of
// the kernel (amax, scale, quantize), one group at a time.
void ds_bf16_round(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(f32_to_bf16(x[i]));
}

void ds_act_quant(const float* x, uint8_t* y, float* s, int64_t rows, int64_t n, int block, int kind, int scale_kind) {
  for (int64_t g = 0; g < rows * (n / block); ++g) {
    const float* xg = x + g * block;
    float amax = 0.0f;
    for (int i = 0; i < block; ++i) {
      const float a = fabsf(xg[i]);
      amax = (a > amax || f32_is_nan(a)) ? a : amax;
      if (f32_is_nan(amax)) break;
    }
    s[g] = group_scale(amax, (Fp8Kind)kind, (ScaleKind)scale_kind);
    for (int i = 0; i < block; ++i) y[g * block + i] = fp8_quantize(xg[i], s[g], (Fp8Kind)kind);
  }
}

void ds_mla_pack(const float* kv, uint8_t* cache, int64_t n, int kind) {
  for (int64_t i = 0; i < n; ++i) mla_pack_row(kv + i * 576, cache + i * MLA_ROW, (Fp8Kind)kind);
}

void ds_mla_unpack(const uint8_t* cache, float* kv, int64_t n, int kind) {
  for (int64_t i = 0; i < n; ++i)
    for (int d = 0; d < 576; ++d) kv[i * 576 + d] = mla_row_elem(cache + i * MLA_ROW, d, (Fp8Kind)kind);
}

// The kernel's selection for one row window, sequentially: four histogram
// passes choose the threshold key, then keys above it are taken and ties at it
// by ascending index. Output order: index order of the taken keys, then -1.
void ds_topk_row(const float* logits, int64_t lo, int64_t hi, int k, int32_t* out) {
  const int64_t n = hi > lo ? hi - lo : 0;
  int w = 0;
  if (n <= k) {
    for (int64_t i = 0; i < n; ++i) out[w++] = (int32_t)(lo + i);
  } else {
    uint32_t prefix = 0, k_rem = (uint32_t)k;
    uint32_t hist[RADIX_BINS];
    for (int p = 0; p < RADIX_PASSES; ++p) {
      memset(hist, 0, sizeof(hist));
      for (int64_t i = lo; i < hi; ++i) {
        const uint32_t key = radix_key(logits[i]);
        if (radix_in_prefix(key, prefix, p)) ++hist[radix_digit(key, p)];
      }
      prefix |= radix_pick(hist, &k_rem) << (32 - RADIX_BITS * (p + 1));
    }
    for (int64_t i = lo; i < hi; ++i) {
      const uint32_t key = radix_key(logits[i]);
      if (key > prefix || (key == prefix && k_rem > 0)) {
        if (key == prefix) --k_rem;
        out[w++] = (int32_t)i;
      }
    }
  }
  while (w < k) out[w++] = -1;
}

// One query row of sparse attention from precomputed scores (natural units)
// and value rows, merged tile by tile as the kernel does. valid[i] == 0 means
// the key is masked: neither its score nor its value row is read.
void ds_sparse_attn_row(const float* scores, const uint8_t* valid, const float* v, int64_t n, int dv, int tile,
                        float* out, float* lse, float* max_logit) {
  SoftmaxState st = softmax_empty();
  std::vector<float> acc(dv, 0.0f), part(dv);
  float mraw = -INFINITY;
  for (int64_t t0 = 0; t0 < n; t0 += tile) {
    SoftmaxState ts = softmax_empty();
    for (int64_t i = t0; i < n && i < t0 + tile; ++i)
      if (valid[i]) { const float s = scores[i] * LOG2E; ts.m = s > ts.m ? s : ts.m; mraw = scores[i] > mraw ? scores[i] : mraw; }
    for (int d = 0; d < dv; ++d) part[d] = 0.0f;
    if (ts.m != -INFINITY) {
      for (int64_t i = t0; i < n && i < t0 + tile; ++i) {
        if (!valid[i]) continue;
        const float p = exp2f(scores[i] * LOG2E - ts.m);
        ts.l += p;
        for (int d = 0; d < dv; ++d) part[d] += p * v[i * dv + d];
      }
    }
    float ca, cb;
    st = softmax_merge(st, ts, &ca, &cb);
    for (int d = 0; d < dv; ++d) acc[d] = (ca == 0.0f ? 0.0f : acc[d] * ca) + (cb == 0.0f ? 0.0f : part[d] * cb);
  }
  const float inv = softmax_inv_l(st);
  for (int d = 0; d < dv; ++d) out[d] = acc[d] * inv;
  *lse = softmax_lse(st);
  *max_logit = mraw;
}

// The same row with the wgmma kernel's arithmetic (sparse_mla_wgmma.cu): per tile the new running
// max first (softmax_step), P = exp2(s - m_new) summed in fp32 for l but rounded to bf16 for the
// product (P is a bf16 tensor-core operand), the old accumulator rescaled by ca. v holds the bf16
// key-tile values the kernel reads.
void ds_sparse_attn_row_wgmma(const float* scores, const uint8_t* valid, const float* v, int64_t n, int dv, int tile,
                              float* out, float* lse, float* max_logit) {
  SoftmaxState st = softmax_empty();
  std::vector<float> acc(dv, 0.0f);
  for (int64_t t0 = 0; t0 < n; t0 += tile) {
    float tm = -INFINITY;
    for (int64_t i = t0; i < n && i < t0 + tile; ++i)
      if (valid[i]) tm = nan_max(tm, scores[i] * LOG2E);
    float ca;
    const float m = softmax_step(st, tm, &ca);
    float l = 0.0f;
    for (int d = 0; d < dv; ++d) acc[d] = ca == 0.0f ? 0.0f : acc[d] * ca;
    for (int64_t i = t0; i < n && i < t0 + tile; ++i) {
      if (!valid[i] || m == -INFINITY) continue;  // p = 0 against the zero row the kernel stages
      const float p = exp2f(scores[i] * LOG2E - m);
      l += p;
      const float pb = bf16_to_f32(f32_to_bf16(p));
      for (int d = 0; d < dv; ++d) acc[d] += pb * v[i * dv + d];
    }
    st.l = st.l * ca + l;
    st.m = m;
  }
  const float inv = softmax_inv_l(st);
  for (int d = 0; d < dv; ++d) out[d] = acc[d] * inv;
  *lse = softmax_lse(st);
  *max_logit = st.m * LN2;
}

// The wgmma kernel's tile arithmetic, for the host check to walk (include/dsport/mla_tiles.cuh).
void ds_wg_tile_offsets(const int32_t* rows, const int32_t* kbytes, int64_t n, int row_bytes, int32_t* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = tile_offset(rows[i], kbytes[i], row_bytes);
}

// operand: 0 Q (A of QK^T), 1 keys (B of QK^T), 2 P (A of P.V), 3 values (B of P.V); out = start, lbo, sbo
void ds_wg_desc(int operand, int wg, int ks, int32_t* out) {
  const WgDesc d = operand == 0 ? qk_a_desc(ks) : operand == 1 ? qk_b_desc(wg, ks) : operand == 2 ? pv_a_desc(ks) : pv_b_desc(wg, ks);
  out[0] = d.start; out[1] = d.lbo; out[2] = d.sbo;
}

uint64_t ds_wg_desc_bits(uint32_t addr, uint32_t lbo, uint32_t sbo) { return desc_bits(addr, lbo, sbo); }

void ds_wg_acc_map(int regs, int32_t* rows, int32_t* cols) {
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < regs; ++i) { rows[t * regs + i] = acc_row(t, i); cols[t * regs + i] = acc_col(t, i); }
}

// smem regions in order (q, key tile, P, row maxima, row sums, where, valid) and the total
void ds_wg_smem(int32_t* out) {
  const int v[8] = {WG_Q_OFF, WG_K_OFF, WG_P_OFF, WG_MAX_OFF, WG_SUM_OFF, WG_WHERE_OFF, WG_VALID_OFF, WG_SMEM_BYTES};
  for (int i = 0; i < 8; ++i) out[i] = v[i];
}

}  // extern "C"
