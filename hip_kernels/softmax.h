// Online softmax (the flash-attention recurrence) as a value type, so the
// sparse-MLA kernels and the host check run the same arithmetic.
//
// A state (m, l) holds the running max of the scaled logits and the running sum
// of exp(logit - m); the output accumulator is rescaled by the same factor.
// Invalid index slots never reach it: the caller skips them, it does not feed
// -inf, because p = 0 times a NaN row read from an unused slot is NaN (SPEC §10).
#pragma once
#include "hip_common.h"

struct SoftmaxState {
  float m;  // running max (natural-log domain), -inf when nothing was seen
  float l;  // sum of exp(x - m)
};

DSP_HD DSP_INLINE SoftmaxState softmax_empty() { return SoftmaxState{-__builtin_inff(), 0.0f}; }

// Fold one score in; returns the factor the accumulator must be multiplied by
// before p * v is added, and p through *p. exp(-inf - -inf) is avoided: the
// first score sets m without a rescale, so an empty state never makes NaN.
DSP_HD DSP_INLINE float softmax_push(SoftmaxState& st, float x, float* p) {
  if (is_nan(x)) { st.m = x; st.l = x; *p = x; return x; }  // NaN in a valid row poisons the row
  float m_new = x > st.m ? x : st.m;
  float alpha = st.m == -__builtin_inff() ? 0.0f : __builtin_expf(st.m - m_new);
  *p = __builtin_expf(x - m_new);
  st.l = st.l * alpha + *p;
  st.m = m_new;
  return alpha;
}

// Merge two partial states (split-K / split-index partials); wa, wb scale the
// two accumulators. Both empty stays empty, with zero weights, never NaN.
DSP_HD DSP_INLINE SoftmaxState softmax_merge(SoftmaxState a, SoftmaxState b, float* wa, float* wb) {
  const float ninf = -__builtin_inff();
  if (is_nan(a.m) || is_nan(b.m)) { float n = __builtin_nanf(""); *wa = *wb = n; return SoftmaxState{n, n}; }
  if (a.m == ninf && b.m == ninf) { *wa = *wb = 0.0f; return a; }
  float m = a.m > b.m ? a.m : b.m;
  *wa = a.m == ninf ? 0.0f : __builtin_expf(a.m - m);
  *wb = b.m == ninf ? 0.0f : __builtin_expf(b.m - m);
  return SoftmaxState{m, a.l * *wa + b.l * *wb};
}

// lse of a finished state: -inf for a row that saw nothing (its output is 0).
DSP_HD DSP_INLINE float softmax_lse(SoftmaxState st) {
  return st.l > 0.0f ? st.m + __builtin_logf(st.l) : (is_nan(st.l) ? st.l : -__builtin_inff());
}
