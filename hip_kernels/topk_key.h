// Order-preserving float -> uint32 key for radix top-k (SPEC §5).
//
// Flipping all bits of a negative float and only the sign bit of a positive one
// makes unsigned order equal float order. Two canonicalizations match the
// reference's torch.sort order: every NaN maps to the largest key (NaN ranks
// above +inf), and -0 maps to +0's key (they are equal values; a tie either way
// is a correct selection, but one key keeps the radix passes from splitting them).
#pragma once
#include "hip_common.h"

DSP_HD DSP_INLINE uint32_t topk_key(float x) {
  if (is_nan(x)) return 0xFFFFFFFFu;
  uint32_t b = f32_bits(x);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Radix select over keys, 8 bits per pass from the top: after the 4 passes,
// `prefix` is the k-th largest key; every key above it is selected, and keys
// equal to it fill the remaining slots. 256-bin histograms: on the device they
// live in LDS (1 KiB per pass), on the host in a local array.
struct RadixState {
  uint32_t prefix, mask;
  int remaining;  // how many of the selection are still to be found among keys matching prefix
};

DSP_HD DSP_INLINE int radix_bin(uint32_t key, int pass) { return (int)((key >> (24 - 8 * pass)) & 0xFF); }

// Given the histogram of this pass (keys matching the current prefix), pick the
// bin holding the k-th largest and narrow the prefix to it.
DSP_HD DSP_INLINE void radix_narrow(RadixState& st, const int* hist, int pass) {
  int above = 0;
  for (int bin = 255; bin >= 0; --bin) {
    if (above + hist[bin] >= st.remaining) {
      st.prefix |= (uint32_t)bin << (24 - 8 * pass);
      st.mask |= 0xFFu << (24 - 8 * pass);
      st.remaining -= above;
      return;
    }
    above += hist[bin];
  }
}
