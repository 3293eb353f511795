// rms_norm (SPEC §3): y = w * x * rsqrt(mean(x^2) + eps) in fp32, optional fused residual add.
//
// One 256-thread workgroup (4 waves) per row: DeepSeek's rows are 7168 (hidden),
// 1536 (q latent) or 512 (kv latent) wide, so a thread holds at most 28 values in
// registers between the reduction and the scaling; the row is read once. The
// sum of squares reduces inside each wave by ds_bpermute and across the 4 waves
// through 16 bytes of LDS. rsqrt is computed as 1/sqrt with the correctly
// rounded sqrt, not v_rsq_f32 (1 ulp approximate), so the fp32 result matches
// the contract's fp32 formula.
#include "hip_common.h"

#define RMS_THREADS 256
#define RMS_MAX_PER_THREAD 28  // 7168 / 256

template <bool RESIDUAL>
__attribute__((device)) static inline void rms_row(const uint16_t* x, const uint16_t* res, const uint16_t* w, uint16_t* y,
                                                   uint16_t* res_out, int n, float eps) {
  DSP_SHARED float partial[RMS_THREADS / DSP_WAVE];
  long row = bid_x();
  int t = tid();
  float v[RMS_MAX_PER_THREAD];
  float ss = 0.0f;
#pragma unroll
  for (int i = 0; i < RMS_MAX_PER_THREAD; ++i) {
    int c = t + i * RMS_THREADS;
    v[i] = 0.0f;
    if (c < n) {
      float a = bf16_to_f32(x[row * n + c]);
      if (RESIDUAL) {
        // the sum is rounded to bf16 before the norm: it is also the new residual, stored in bf16
        uint16_t r = f32_to_bf16(a + bf16_to_f32(res[row * n + c]));
        res_out[row * n + c] = r;
        a = bf16_to_f32(r);
      }
      v[i] = a;
      ss += a * a;
    }
  }
  ss = wave_sum(ss);
  if (lane_id() == 0) partial[t >> 6] = ss;
  barrier();
  float total = partial[0] + partial[1] + partial[2] + partial[3];
  float r = 1.0f / __builtin_sqrtf(total / (float)n + eps);
#pragma unroll
  for (int i = 0; i < RMS_MAX_PER_THREAD; ++i) {
    int c = t + i * RMS_THREADS;
    if (c < n) y[row * n + c] = f32_to_bf16(bf16_to_f32(w[c]) * (v[i] * r));
  }
}

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_rms_norm(const uint16_t* x, const uint16_t* w, uint16_t* y, int n, float eps) { rms_row<false>(x, nullptr, w, y, nullptr, n, eps); }

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_rms_norm_residual(const uint16_t* x, const uint16_t* res, const uint16_t* w, uint16_t* y, uint16_t* res_out, int n, float eps) {
  rms_row<true>(x, res, w, y, res_out, n, eps);
}
