// topk_select (SPEC §5): the k largest logits of row t within [ks[t], ke[t]), -1 padded.
//
// One 1024-thread workgroup (16 waves) per row. Radix select on the
// order-preserving keys of topk_key.h: 4 passes of 8 bits build a 256-bin
// histogram of the keys still matching the prefix (LDS atomics: 1 KiB), one lane
// picks the bin holding the k-th largest (radix_narrow, the same code the host
// check runs), and a last pass writes every key above the threshold and, up to k,
// keys equal to it. No sort: the result is a set, and a sort of 2048 of 128K
// candidates would cost more than the 5 streaming passes over the row.
//
// The row is re-read from global memory in every pass rather than cached in LDS:
// a 128K-token row is 512 KiB, beyond any LDS, and stays in the L2 between passes.
// -inf logits inside the window are candidates (validity is the window, not the
// value); NaN ranks above +inf, as in the reference's sort.
#include "topk_key.h"

#define TK_THREADS 1024

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(TK_THREADS, TK_THREADS)))
dsp_topk_select(const float* __restrict__ logits, long stride, const int* __restrict__ ks, const int* __restrict__ ke,
                int k, int* __restrict__ out) {
  DSP_SHARED int hist[256];
  DSP_SHARED RadixState st;
  DSP_SHARED int n_above, n_ties;
  const long row = bid_x();
  const int t = tid();
  const float* x = logits + row * stride;
  int* o = out + row * (long)k;
  const int lo = ks ? ks[row] : 0, hi = ke ? ke[row] : (int)stride;
  const int n = hi > lo ? hi - lo : 0;
  if (n <= k) {  // the whole window is the selection (dense attention), then -1
    for (int j = t; j < k; j += TK_THREADS) o[j] = j < n ? lo + j : -1;
    return;
  }
  if (t == 0) st = RadixState{0u, 0u, k};
  for (int pass = 0; pass < 4; ++pass) {
    for (int i = t; i < 256; i += TK_THREADS) hist[i] = 0;
    barrier();
    const uint32_t prefix = st.prefix, mask = st.mask;
    for (int i = lo + t; i < hi; i += TK_THREADS) {
      uint32_t key = topk_key(x[i]);
      if ((key & mask) == prefix) __hip_atomic_fetch_add(&hist[radix_bin(key, pass)], 1, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_WORKGROUP);
    }
    barrier();
    if (t == 0) radix_narrow(st, hist, pass);
    barrier();
  }
  if (t == 0) { n_above = 0; n_ties = 0; }
  barrier();
  const uint32_t kth = st.prefix;
  const int ties = st.remaining, above = k - ties;
  for (int i = lo + t; i < hi; i += TK_THREADS) {
    uint32_t key = topk_key(x[i]);
    if (key > kth) {
      o[__hip_atomic_fetch_add(&n_above, 1, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_WORKGROUP)] = i;
    } else if (key == kth) {
      int slot = __hip_atomic_fetch_add(&n_ties, 1, __ATOMIC_RELAXED, __HIP_MEMORY_SCOPE_WORKGROUP);
      if (slot < ties) o[above + slot] = i;
    }
  }
}
