// The 656-byte-per-token FP8 MLA latent cache (SPEC §6, FlashMLA's sparse decode
// layout): 512 fp8 latent bytes in four 128-dim tiles | 4 float32 tile scales
// (ue8m0 values, little-endian) | 64 bf16 rope values. 656 = 41 x 16 B, so every
// token row starts 16-byte aligned and a wave reads a row with dwordx4 loads.
#pragma once
#include "fp8.h"

#define MLA_LATENT 512
#define MLA_ROPE 64
#define MLA_TILE 128
#define MLA_TILES (MLA_LATENT / MLA_TILE)
#define MLA_ROW 656
#define MLA_SCALE_OFF MLA_LATENT
#define MLA_ROPE_OFF (MLA_LATENT + 4 * MLA_TILES)

// One tile: amax, ue8m0 scale, 128 bytes. Division x / s, not x * (1 / s): the
// contract's quantizer divides, and with a power-of-two s both are exact anyway,
// but a fp32-scaled caller of the same helper would differ by an ulp.
template <int K> DSP_HD DSP_INLINE float quant_tile(const float* x, int n, uint8_t* y, bool ue8m0) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = amax_step(amax, x[i]);
  float s = group_scale<K>(amax, ue8m0);
  for (int i = 0; i < n; ++i) y[i] = fp8_encode<K>(x[i] / s);
  return s;
}

// Host form: one token row (576 floats: 512 latent, 64 rope) -> 656 bytes.
template <int K> DSP_HD DSP_INLINE void mla_pack_row(const float* kv, uint8_t* row) {
  for (int t = 0; t < MLA_TILES; ++t) {
    float s = quant_tile<K>(kv + t * MLA_TILE, MLA_TILE, row + t * MLA_TILE, true);
    uint32_t sb = f32_bits(s);
    for (int j = 0; j < 4; ++j) row[MLA_SCALE_OFF + 4 * t + j] = (uint8_t)(sb >> (8 * j));
  }
  for (int i = 0; i < MLA_ROPE; ++i) {
    uint16_t h = f32_to_bf16(kv[MLA_LATENT + i]);
    row[MLA_ROPE_OFF + 2 * i] = (uint8_t)h;
    row[MLA_ROPE_OFF + 2 * i + 1] = (uint8_t)(h >> 8);
  }
}

// Element i (0..575) of a cache row as float: latent byte times its tile scale
// (exact: an e4m3 value times a power of two fits float32), or the rope value.
template <int K> DSP_HD DSP_INLINE float mla_row_value(const uint8_t* row, int i) {
  if (i < MLA_LATENT) {
    const uint8_t* sp = row + MLA_SCALE_OFF + 4 * (i / MLA_TILE);
    uint32_t sb = (uint32_t)sp[0] | ((uint32_t)sp[1] << 8) | ((uint32_t)sp[2] << 16) | ((uint32_t)sp[3] << 24);
    return fp8_decode<K>(row[i]) * bits_f32(sb);
  }
  int r = i - MLA_LATENT;
  return bf16_to_f32((uint16_t)(row[MLA_ROPE_OFF + 2 * r] | (row[MLA_ROPE_OFF + 2 * r + 1] << 8)));
}
