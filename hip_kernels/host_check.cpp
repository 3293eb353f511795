// The scalar building blocks of hip_kernels/*.h compiled for the CPU (g++), with a
// C ABI for ctypes: dsport.backends.hip.host loads this and the tests compare it
// with torch's float8 dtypes and with the reference. What it proves: the
// arithmetic the kernels are written with. What it cannot: the device-only paths
// (v_cvt_pk_fp8_f32 / v_cvt_f32_fp8, MFMA, LDS, wave shuffles), which only a run
// on gfx942 / gfx950 checks.
#include <stdint.h>
#include <string.h>

#include "e8m0.h"
#include "fp8.h"
#include "mla_cache.h"
#include "softmax.h"
#include "topk_key.h"

#define API extern "C" __attribute__((visibility("default")))

template <int K> static void encode_n(const float* x, uint8_t* y, int64_t n) { for (int64_t i = 0; i < n; ++i) y[i] = fp8_encode<K>(x[i]); }
template <int K> static void decode_n(const uint8_t* y, float* x, int64_t n) { for (int64_t i = 0; i < n; ++i) x[i] = fp8_decode<K>(y[i]); }

API void dsp_fp8_encode(const float* x, uint8_t* y, int64_t n, int fmt) { fmt == E4M3FNUZ ? encode_n<E4M3FNUZ>(x, y, n) : encode_n<E4M3FN>(x, y, n); }
API void dsp_fp8_decode(const uint8_t* y, float* x, int64_t n, int fmt) { fmt == E4M3FNUZ ? decode_n<E4M3FNUZ>(y, x, n) : decode_n<E4M3FN>(y, x, n); }
API void dsp_e5m2_encode(const float* x, uint8_t* y, int64_t n) { for (int64_t i = 0; i < n; ++i) y[i] = e5m2_encode_sw(x[i]); }
API void dsp_e5m2_decode(const uint8_t* y, float* x, int64_t n) { for (int64_t i = 0; i < n; ++i) x[i] = e5m2_decode_sw(y[i]); }
API void dsp_e8m0_decode(const uint8_t* b, float* out, int64_t n) { for (int64_t i = 0; i < n; ++i) out[i] = e8m0_decode(b[i]); }
API void dsp_e8m0_encode(const float* s, int32_t* out, int64_t n) { for (int64_t i = 0; i < n; ++i) out[i] = e8m0_encode(s[i]); }
// the scale byte of every (row, 32-block) the E8M0-scaled MFMA is fed: out_a [M, K/32], out_b [N, K/32]
API void dsp_mx_scales(const float* sa, const float* sb, int M, int N, int K, int32_t* out_a, int32_t* out_b) {
  const int kblocks = K / 128;
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < K / 32; ++j) out_a[(long)m * (K / 32) + j] = mx_scale_a(sa, kblocks, m, j);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < K / 32; ++j) out_b[(long)n * (K / 32) + j] = mx_scale_b(sb, kblocks, n, j);
}
API void dsp_ue8m0_ceil(const float* s, float* out, int64_t n) { for (int64_t i = 0; i < n; ++i) out[i] = ue8m0_ceil(s[i]); }

template <int K> static void act_quant_rows(const float* x, int64_t rows, int64_t n, int block, int ue8m0, uint8_t* y, float* s) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t g = 0; g < n / block; ++g)
      s[r * (n / block) + g] = quant_tile<K>(x + r * n + g * block, block, y + r * n + g * block, ue8m0 != 0);
}
API void dsp_act_quant(const float* x, int64_t rows, int64_t n, int block, int fmt, int ue8m0, uint8_t* y, float* s) {
  fmt == E4M3FNUZ ? act_quant_rows<E4M3FNUZ>(x, rows, n, block, ue8m0, y, s) : act_quant_rows<E4M3FN>(x, rows, n, block, ue8m0, y, s);
}

API void dsp_mla_cache_pack(const float* kv, int64_t n, int fmt, uint8_t* out) {
  for (int64_t t = 0; t < n; ++t)
    fmt == E4M3FNUZ ? mla_pack_row<E4M3FNUZ>(kv + t * 576, out + t * MLA_ROW) : mla_pack_row<E4M3FN>(kv + t * 576, out + t * MLA_ROW);
}
API void dsp_mla_cache_unpack(const uint8_t* cache, int64_t n, int fmt, float* out) {
  for (int64_t t = 0; t < n; ++t)
    for (int i = 0; i < 576; ++i)
      out[t * 576 + i] = fmt == E4M3FNUZ ? mla_row_value<E4M3FNUZ>(cache + t * MLA_ROW, i) : mla_row_value<E4M3FN>(cache + t * MLA_ROW, i);
}

API void dsp_topk_keys(const float* x, uint32_t* keys, int64_t n) { for (int64_t i = 0; i < n; ++i) keys[i] = topk_key(x[i]); }

// topk_select with the kernel's algorithm: 4 radix passes find the k-th largest
// key, then one pass writes keys above it and, up to k, keys equal to it.
API void dsp_topk_select(const float* logits, int64_t T, int64_t S, int k, const int32_t* ks, const int32_t* ke, int32_t* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* row = logits + t * S;
    int lo = ks ? ks[t] : 0, hi = ke ? ke[t] : (int)S;
    int32_t* o = out + t * k;
    for (int j = 0; j < k; ++j) o[j] = -1;
    int n = hi - lo;
    if (n <= 0) continue;
    if (n <= k) { for (int j = 0; j < n; ++j) o[j] = lo + j; continue; }  // S < k: the whole window
    RadixState st{0, 0, k};
    for (int pass = 0; pass < 4; ++pass) {
      int hist[256];
      memset(hist, 0, sizeof hist);
      for (int i = lo; i < hi; ++i) { uint32_t key = topk_key(row[i]); if ((key & st.mask) == st.prefix) hist[radix_bin(key, pass)]++; }
      radix_narrow(st, hist, pass);
    }
    int w = 0, ties = st.remaining;
    for (int i = lo; i < hi; ++i) {
      uint32_t key = topk_key(row[i]);
      if (key > st.prefix) o[w++] = i;
      else if (key == st.prefix && ties > 0) { o[w++] = i; --ties; }
    }
  }
}

API void dsp_softmax_merge(const float* m, const float* l, int64_t n, float* m_out, float* l_out, float* wa, float* wb) {
  // pairs (m[2i], l[2i]) and (m[2i+1], l[2i+1]) -> merged state and both weights
  for (int64_t i = 0; i < n; ++i) {
    SoftmaxState r = softmax_merge(SoftmaxState{m[2 * i], l[2 * i]}, SoftmaxState{m[2 * i + 1], l[2 * i + 1]}, wa + i, wb + i);
    m_out[i] = r.m; l_out[i] = r.l;
  }
}

// Sparse MLA for one (t, h) row with the kernels' schedule: indices in chunks of
// `chunk` (one chunk per split), each chunk an online-softmax partial, partials
// merged. kv is float32 [S, 576]; indices -1 or >= S are skipped, never read.
API int dsp_sparse_mla(const float* q, const float* kv, const int32_t* idx, int64_t T, int H, int64_t S, int K, int D, int DV,
                       float sm_scale, int chunk, float* out, float* lse, float* maxl) {
  float acc[512], part[512];
  if (DV > 512 || DV > D) return -1;
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) {
      const float* qr = q + (t * H + h) * D;
      SoftmaxState total = softmax_empty();
      float mx = -__builtin_inff();
      for (int j = 0; j < DV; ++j) acc[j] = 0.0f;
      for (int c0 = 0; c0 < K; c0 += chunk) {
        SoftmaxState st = softmax_empty();
        for (int j = 0; j < DV; ++j) part[j] = 0.0f;
        for (int c = c0; c < K && c < c0 + chunk; ++c) {
          int s = idx[t * K + c];
          if (s < 0 || s >= S) continue;  // SPEC §10: not read at all
          const float* kr = kv + (int64_t)s * D;
          float dot = 0.0f;
          for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
          float x = dot * sm_scale, p;
          mx = (is_nan(x) || x > mx) ? x : mx;
          float alpha = softmax_push(st, x, &p);
          for (int j = 0; j < DV; ++j) part[j] = part[j] * alpha + p * kr[j];
        }
        float wa, wb;
        total = softmax_merge(total, st, &wa, &wb);
        for (int j = 0; j < DV; ++j) acc[j] = acc[j] * wa + part[j] * wb;
      }
      float* o = out + (t * H + h) * DV;
      for (int j = 0; j < DV; ++j) o[j] = total.l > 0.0f || is_nan(total.l) ? acc[j] / total.l : 0.0f;
      lse[t * H + h] = softmax_lse(total);
      maxl[t * H + h] = mx;
    }
  return 0;
}
