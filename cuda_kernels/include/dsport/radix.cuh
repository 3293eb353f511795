// Top-k radix select building blocks (SPEC §5). A float is mapped to a uint32
// whose unsigned order is the float order, so selection becomes four passes of
// 8-bit digit histograms (MSB first) over keys — the kernel never sorts a row.
//
// Tie rule (the spec's reference order): larger value first, NaN above +inf
// (torch.sort), -0 equal to +0, and among equal values the lower index wins.
// Any tied choice is a correct set under SPEC §5; choosing the reference's lets
// the host check compare index sets exactly.
#pragma once
#include "common.cuh"

namespace dsport {

constexpr int RADIX_BITS = 8, RADIX_BINS = 1 << RADIX_BITS, RADIX_PASSES = 32 / RADIX_BITS;

DS_HD uint32_t radix_key(float x) {
  if (f32_is_nan(x)) return 0xffffffffu;      // every NaN ranks above +inf (key 0xff800000)
  uint32_t u = f32_bits(x);
  if (u == 0x80000000u) u = 0u;                // -0 ties with +0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Digit of `key` in pass p (p = 0 is the most significant byte).
DS_HD uint32_t radix_digit(uint32_t key, int p) { return (key >> (32 - RADIX_BITS * (p + 1))) & (RADIX_BINS - 1); }

// Whether `key` still matches the selected prefix before pass p.
DS_HD bool radix_in_prefix(uint32_t key, uint32_t prefix, int p) {
  if (p == 0) return true;
  const int shift = 32 - RADIX_BITS * p;
  return (key >> shift) == (prefix >> shift);
}

// Given the histogram of this pass (keys within the prefix) and the number of
// keys still to take, pick the digit holding the k-th largest: the digits
// above it are taken whole, and `*k_rem` becomes how many to take inside it.
DS_HD uint32_t radix_pick(const uint32_t* hist, uint32_t* k_rem) {
  uint32_t above = 0;
  for (int d = RADIX_BINS - 1; d >= 0; --d) {
    if (above + hist[d] >= *k_rem) { *k_rem -= above; return (uint32_t)d; }
    above += hist[d];
  }
  return 0;  // unreachable when k_rem <= number of keys in the prefix
}

}  // namespace dsport
