// Online-softmax state for sparse attention, merged tile by tile (64 keys per
// tile in the kernels). Scores are kept in the log2 domain (pre-multiplied by
// log2 e) so each exponential is one exp2 (MUFU.EX2 on the device); lse is
// returned in natural log as SPEC §6 asks, whatever base a vendor library uses.
//
// SPEC §10: a masked key (index -1 or out of range) never enters the sums — it
// is skipped, not given p = 0, because its value row may be NaN and 0 * NaN is
// NaN. An empty row keeps m = -inf, l = 0: out = 0, lse = -inf, never NaN.
#pragma once
#include "common.cuh"

namespace dsport {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

struct SoftmaxState {
  float m;  // running max of scores (log2 domain)
  float l;  // running sum of exp2(score - m)
};

DS_HD SoftmaxState softmax_empty() { return SoftmaxState{-INFINITY, 0.0f}; }


// Merge two partial states (split-KV partials, or two tiles). Returns the
// factors (ca, cb) the callers apply to their output accumulators.
DS_HD SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b, float* ca, float* cb) {
  const float m = a.m > b.m ? a.m : b.m;
  // both empty: exp2(-inf - -inf) would be NaN; with a finite m, exp2(-inf - m) is exactly 0
  if (m == -INFINITY) { *ca = 0.0f; *cb = 0.0f; return softmax_empty(); }
  *ca = exp2f(a.m - m);
  *cb = exp2f(b.m - m);
  return SoftmaxState{m, a.l * *ca + b.l * *cb};
}

// max that keeps a NaN (fmaxf drops it): a NaN score must make the row NaN, never "empty" (SPEC §10)
DS_HD float nan_max(float a, float b) { return (b > a || b != b) && a == a ? b : a; }

// One tile of the online softmax when P feeds a tensor core: P is computed
// against the NEW running max, exp2(s - m_new), so the tile's factor (the cb
// of softmax_merge) is already inside P and only the old accumulator and sum
// are rescaled, by *ca. Returns m_new. Equals softmax_merge(run, {tile_max, l_tile})
// with l_tile * cb summed from those P values.
DS_HD float softmax_step(SoftmaxState run, float tile_max, float* ca) {
  const float m = nan_max(run.m, tile_max);
  if (m == -INFINITY) { *ca = 0.0f; return m; }  // nothing valid yet: -inf - -inf would be NaN
  *ca = exp2f(run.m - m);
  return m;
}

// Natural-log lse of a state; -inf for an empty row.
DS_HD float softmax_lse(SoftmaxState s) {
  return s.l == 0.0f ? -INFINITY : (s.m + log2f(s.l)) * LN2;
}

// 1/l for the output normalisation; an empty row's accumulator is 0 and stays 0.
DS_HD float softmax_inv_l(SoftmaxState s) { return s.l == 0.0f ? 0.0f : 1.0f / s.l; }

}  // namespace dsport
