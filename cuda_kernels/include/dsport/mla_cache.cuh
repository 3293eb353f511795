// The 656-byte FP8 MLA latent cache row (SPEC §6, FlashMLA's sparse decode
// layout): 512 FP8 latent bytes in four 128-tiles, four fp32 ue8m0 tile
// scales, 64 bf16 rope values. 656 = 41 * 16, so rows stay 16-byte aligned
// for vector loads; FlashMLA additionally requires stride(1) == 656 and lets a
// page's stride exceed block_size * 656.
#pragma once
#include "fp8.cuh"

namespace dsport {

constexpr int MLA_LATENT = 512, MLA_ROPE = 64, MLA_TILE = 128, MLA_TILES = 4;
constexpr int MLA_SCALE_OFF = MLA_LATENT, MLA_ROPE_OFF = MLA_LATENT + 4 * MLA_TILES, MLA_ROW = MLA_ROPE_OFF + 2 * MLA_ROPE;
static_assert(MLA_ROW == 656, "cache row width");

// One tile's scale and bytes: exactly act_quant(tile, 128, fmt, ue8m0).
DS_HD float mla_pack_tile(const float* x, uint8_t* out, Fp8Kind k) {
  float amax = 0.0f;
  for (int i = 0; i < MLA_TILE; ++i) {
    const float a = fabsf(x[i]);
    amax = (a > amax || f32_is_nan(a)) ? a : amax;  // NaN wins, as torch's amax
    if (f32_is_nan(amax)) break;
  }
  const float s = group_scale(amax, k, SCALE_UE8M0);
  for (int i = 0; i < MLA_TILE; ++i) out[i] = fp8_quantize(x[i], s, k);
  return s;
}

DS_HD void mla_pack_row(const float* kv576, uint8_t* row656, Fp8Kind k) {
  for (int t = 0; t < MLA_TILES; ++t) {
    const float s = mla_pack_tile(kv576 + t * MLA_TILE, row656 + t * MLA_TILE, k);
    const uint32_t b = f32_bits(s);
    for (int j = 0; j < 4; ++j) row656[MLA_SCALE_OFF + 4 * t + j] = (uint8_t)(b >> (8 * j));  // little-endian
  }
  for (int i = 0; i < MLA_ROPE; ++i) {
    const uint16_t h = f32_to_bf16(kv576[MLA_LATENT + i]);
    row656[MLA_ROPE_OFF + 2 * i] = (uint8_t)h;
    row656[MLA_ROPE_OFF + 2 * i + 1] = (uint8_t)(h >> 8);
  }
}

DS_HD float mla_row_scale(const uint8_t* row656, int tile) {
  const uint8_t* p = row656 + MLA_SCALE_OFF + 4 * tile;
  return bits_f32((uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24));
}

// Dequantized element d (0..575) of a cache row: fp8 * tile scale is exact in
// fp32 (a 4-bit mantissa times a power of two), rope is bf16 widened.
DS_HD float mla_row_elem(const uint8_t* row656, int d, Fp8Kind k) {
  if (d < MLA_LATENT) return fp8_decode(row656[d], k) * mla_row_scale(row656, d / MLA_TILE);
  const int i = d - MLA_LATENT;
  return bf16_to_f32((uint16_t)(row656[MLA_ROPE_OFF + 2 * i] | (row656[MLA_ROPE_OFF + 2 * i + 1] << 8)));
}

}  // namespace dsport
