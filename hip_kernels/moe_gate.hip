// moe_gate (SPEC §7), sigmoid scoring: s = sigmoid(x W^T); selection on s + bias
// within the topk_group best groups (group score = sum of its top-2); weights =
// s[ids] / sum s[ids] * route_scale.
//
// One 256-thread workgroup per token. The token's hidden row (7168 bf16) is
// staged once in LDS as fp32 (28 KiB, inside gfx942's 64 KiB) because all 256
// expert dot products read it; each wave then takes every 4th expert and its 64
// lanes stream that expert's weight row (coalesced) — a GEMV with T = 1..few
// tokens per step gains nothing from MFMA, whose 16-row tiles would be mostly
// padding. Selection needs 256 scores and 8 group scores: 2 KiB of LDS, one wave.
#include "hip_common.h"

#define MG_THREADS 256
#define MG_MAX_D 7168
#define MG_MAX_E 256

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(MG_THREADS, MG_THREADS)))
dsp_moe_gate(const uint16_t* __restrict__ x, const uint16_t* __restrict__ w, const float* __restrict__ bias, int D, int E,
             int n_group, int topk_group, int topk, float route_scale, float* __restrict__ weights, int* __restrict__ ids) {
  DSP_SHARED float xs[MG_MAX_D];
  DSP_SHARED float score[MG_MAX_E], sel[MG_MAX_E];
  DSP_SHARED float gscore[32];
  const long tok = bid_x();
  const int t = tid(), lane = lane_id(), wave = t >> 6;
  for (int i = t; i < D; i += MG_THREADS) xs[i] = bf16_to_f32(x[tok * D + i]);
  barrier();
  for (int e = wave; e < E; e += MG_THREADS / DSP_WAVE) {
    float acc = 0.0f;
    for (int i = lane; i < D; i += DSP_WAVE) acc += xs[i] * bf16_to_f32(w[(long)e * D + i]);
    acc = wave_sum(acc);
    if (lane == 0) {
      float s = 1.0f / (1.0f + __builtin_expf(-acc));
      score[e] = s;
      sel[e] = bias ? s + bias[e] : s;
    }
  }
  barrier();
  const int per = E / n_group;
  if (n_group > 1) {
    if (t < n_group) {  // group score: top-2 sum with bias, top-1 without (DeepSeek's Gate)
      float a = -__builtin_inff(), b = -__builtin_inff();
      for (int i = 0; i < per; ++i) {
        float v = sel[t * per + i];
        if (v > a) { b = a; a = v; } else if (v > b) { b = v; }
      }
      gscore[t] = bias ? a + b : a;
    }
    barrier();
    if (t == 0) {  // keep the topk_group best groups, ties to the lower group
      unsigned keep = 0;
      for (int r = 0; r < topk_group; ++r) {
        int best = -1;
        for (int g = 0; g < n_group; ++g)
          if (!(keep >> g & 1) && (best < 0 || gscore[g] > gscore[best])) best = g;
        keep |= 1u << best;
      }
      gscore[31] = __builtin_bit_cast(float, keep);
    }
    barrier();
    unsigned keep = __builtin_bit_cast(unsigned, gscore[31]);
    for (int e = t; e < E; e += MG_THREADS)
      if (!(keep >> (e / per) & 1)) sel[e] = -__builtin_inff();
    barrier();
  }
  if (wave == 0) {
    // topk rounds of a wave-wide argmax over 4 experts per lane; ties to the lower id
    float total = 0.0f;
    int chosen[16];
    for (int r = 0; r < topk; ++r) {
      float bv = -__builtin_inff();
      int bi = 0x7FFFFFFF;
      for (int e = lane; e < E; e += DSP_WAVE)
        if (sel[e] > bv || (sel[e] == bv && e < bi)) { bv = sel[e]; bi = e; }
      for (int m = 32; m > 0; m >>= 1) {
        float ov = shfl_xor(bv, m);
        int oi = (int)shfl_xor_u((unsigned)bi, m);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
      }
      chosen[r & 15] = bi;
      total += score[bi];
      if (lane == 0) sel[bi] = -__builtin_inff();
      __builtin_amdgcn_wave_barrier();
    }
    for (int r = lane; r < topk && r < 16; r += DSP_WAVE) {
      ids[tok * topk + r] = chosen[r];
      weights[tok * topk + r] = score[chosen[r]] / total * route_scale;
    }
  }
}
