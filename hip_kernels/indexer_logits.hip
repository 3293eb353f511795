// indexer_logits (SPEC §4, DeepGEMM fp8_mqa_logits contract):
//   I[t, s] = k_scale[s] * sum_h w[t, h] * relu(q[t, h] . k[s]),  s in [ks[t], ke[t]), -inf elsewhere.
//
// A 256-thread workgroup takes one query token and 64 keys; wave w scores keys
// 16w .. 16w+15 against all heads with the fp8 MFMA (heads are the M side, 16 per
// tile, 4 tiles for the model's 64 heads; D = 128 is 4 k-steps of 32). The head
// reduction never leaves registers: each lane weights and relus its 4 heads x 4
// tiles, and two ds_bpermute steps sum the 4 lane groups that share a key. No
// LDS: every key byte is used by exactly one MFMA, and the token's q (8 KiB) is
// re-read by the 4 waves from L1/L2 rather than staged.
//
// relu keeps NaN (non-finite in, non-finite out); fmaxf(x, 0) would hide it.
// Keys outside the window are never read (SPEC §10).
#include "mfma.h"

#define IL_KEYS 64
#define IL_D 128
#define IL_HT 4  // head tiles of 16: up to 64 heads

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_indexer_logits(const uint8_t* __restrict__ q, const uint8_t* __restrict__ k, const float* __restrict__ k_scale,
                   const float* __restrict__ w, const int* __restrict__ ks, const int* __restrict__ ke, int H, long S,
                   float* __restrict__ logits) {
  const long t = bid_y();
  const int lane = lane_id(), wave = tid() >> 6;
  const long s = (long)bid_x() * IL_KEYS + 16 * wave + lane % 16;  // the key this lane feeds and reports
  const int lo = ks[t], hi = ke[t];
  const bool inside = s >= lo && s < hi && s < S;
  f32x4 acc[IL_HT] = {};
#pragma unroll
  for (int d0 = 0; d0 < IL_D; d0 += 32) {
    const long kb = inside ? *(const long*)(k + s * IL_D + d0 + 8 * (lane / 16)) : 0;
#pragma unroll
    for (int ht = 0; ht < IL_HT; ++ht) {
      int h = 16 * ht + lane % 16;
      long qa = h < H ? *(const long*)(q + (t * H + h) * IL_D + d0 + 8 * (lane / 16)) : 0;
      acc[ht] = mfma_fp8(qa, kb, acc[ht]);
    }
  }
  float part = 0.0f;
#pragma unroll
  for (int ht = 0; ht < IL_HT; ++ht)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      int h = 16 * ht + 4 * (lane / 16) + i;
      float x = acc[ht][i];
      float r = x > 0.0f ? x : (is_nan(x) ? x : 0.0f);
      if (h < H) part += w[t * H + h] * r;
    }
  part += shfl_xor(part, 16);
  part += shfl_xor(part, 32);
  if (lane < 16 && s < S) logits[t * S + s] = inside ? part * (k_scale ? k_scale[s] : 1.0f) : -__builtin_inff();
}
