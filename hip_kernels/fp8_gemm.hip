// fp8_gemm (SPEC §2): C[m, n] = sum_kb (a_kb . b_kb) * sa[m, kb] * sb[n / 128, kb], bf16 out.
//
// Both operands are K-contiguous (the "NT" layout of DeepSeek's weights), which
// is what the fp8 MFMA wants: each lane feeds 8 consecutive K bytes of one row.
//
// Tiling: a 256-thread workgroup (4 waves, one per SIMD) computes a 64x64 tile of
// C; wave w owns the 32x32 quadrant (w / 2, w % 2) as 2x2 MFMA 16x16 tiles.
// K advances by the scale block (128): the block's A and B tiles (64 x 128 bytes
// each) are staged in LDS, 4 MFMA k-steps of 32 accumulate the block's partial
// sum in fresh fp32 accumulators, and the partial is then promoted into the
// running sum with the two scales — the contract's "each 128-wide partial sum
// promoted to fp32". (On gfx950, fp8_gemm_mx.hip applies ue8m0 scales inside
// __builtin_amdgcn_mfma_scale_f32_16x16x128_f8f6f4 instead; it takes per-32-element
// E8M0 scales only, while sa here may be fp32, so this kernel stays the general one.)
//
// LDS: rows padded 128 -> 136 bytes so that the 16 rows one MFMA operand read
// touches fall in 16 different bank pairs (stride 34 banks): 2 x 64 x 136 B =
// 17 KiB, well inside gfx942's 64 KiB, leaving room for 3 workgroups per CU.
#include "mfma.h"

#define BM 64
#define BN 64
#define BK 128
#define LDS_ROW 136

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_fp8_gemm(const uint8_t* __restrict__ a, const float* __restrict__ sa, const uint8_t* __restrict__ b,
             const float* __restrict__ sb, uint16_t* __restrict__ c, int M, int N, int K) {
  DSP_SHARED uint8_t la[BM * LDS_ROW];
  DSP_SHARED uint8_t lb[BN * LDS_ROW];
  const int t = tid(), lane = lane_id(), wave = t >> 6;
  const int m0 = bid_y() * BM, n0 = bid_x() * BN;
  const int kblocks = K / BK;
  const int wm = (wave >> 1) * 32, wn = (wave & 1) * 32;
  f32x4 acc[2][2] = {};
  for (int kb = 0; kb < kblocks; ++kb) {
    // stage: 64 rows x 128 bytes per operand = 512 x 16 B; 2 dwordx4 per thread per operand.
    // Rows past M / N are zero-filled, never read (SPEC §10).
    for (int i = t; i < BM * BK / 16; i += 256) {
      int r = i / (BK / 16), col = (i % (BK / 16)) * 16;
      typedef uint32_t u32x4 __attribute__((ext_vector_type(4)));
      u32x4 va = {0, 0, 0, 0}, vb = {0, 0, 0, 0};
      if (m0 + r < M) va = *(const u32x4*)(a + (long)(m0 + r) * K + kb * BK + col);
      if (n0 + r < N) vb = *(const u32x4*)(b + (long)(n0 + r) * K + kb * BK + col);
      // a padded row starts 8-byte aligned only (136 = 8 x 17): two 64-bit LDS stores, not one ds_write_b128
      typedef uint32_t u32x2 __attribute__((ext_vector_type(2)));
      *(u32x2*)(la + r * LDS_ROW + col) = va.xy;
      *(u32x2*)(la + r * LDS_ROW + col + 8) = va.zw;
      *(u32x2*)(lb + r * LDS_ROW + col) = vb.xy;
      *(u32x2*)(lb + r * LDS_ROW + col + 8) = vb.zw;
    }
    barrier();
    f32x4 part[2][2] = {};
#pragma unroll
    for (int ks = 0; ks < BK; ks += 32) {
      long fa[2], fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        fa[i] = *(const long*)(la + (wm + 16 * i + lane % 16) * LDS_ROW + ks + 8 * (lane / 16));
        fb[i] = *(const long*)(lb + (wn + 16 * i + lane % 16) * LDS_ROW + ks + 8 * (lane / 16));
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) part[i][j] = mfma_fp8(fa[i], fb[j], part[i][j]);
    }
    // promotion: a 64-wide N tile lies inside one 128-row weight block, so sb is one scalar here
    const float sbv = sb[(long)(n0 / 128) * kblocks + kb];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int m = m0 + wm + 16 * i + 4 * (lane / 16) + r;
        float s = m < M ? sa[(long)m * kblocks + kb] * sbv : 0.0f;
#pragma unroll
        for (int j = 0; j < 2; ++j) acc[i][j][r] += part[i][j][r] * s;
      }
    barrier();  // the next block overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int m = m0 + wm + 16 * i + 4 * (lane / 16) + r, n = n0 + wn + 16 * j + lane % 16;
        if (m < M && n < N) c[(long)m * N + n] = f32_to_bf16(acc[i][j][r]);
      }
}
