// fp8_gemm (SPEC §2) on gfx950's E8M0-scaled MFMA: C[m, n] = sum_kb (a_kb . b_kb) * sa[m, kb] *
// sb[n / 128, kb], bf16 out, for ue8m0 scales (positive powers of two) only.
//
// v_mfma_scale_f32_16x16x128_f8f6f4 (CDNA4 / gfx950 only; clang's
// __builtin_amdgcn_mfma_scale_f32_16x16x128_f8f6f4(a, b, c, cbsz, blgp, opsel_a, scale_a, opsel_b, scale_b)):
// A 16x128, B 128x16, D 16x16 fp32. Lane l supplies A[l % 16][32*(l/16) .. +32) (32 bytes, v8i32)
// and B[32*(l/16) .. +32)[l % 16], each with ONE E8M0 scale byte for its 32 elements, and holds
// D[4*(l/16) + i][l % 16] as the 16x16x32 form does. cbsz = blgp = 0 selects OCP e4m3 for both
// operands — gfx950's own format; there is no fnuz encoding for this instruction.
//
// Against dsp_fp8_gemm (fp8_gemm.hip): one instruction covers the whole 128-block and applies both
// scales inside, so the four 16x16x32 MFMAs per block, the fresh partial accumulators and the
// promotion multiply-add disappear; the accumulator is the running sum. Exactness is unchanged:
// scaling by a power of two is exact in fp32. What this cannot serve: fp32 (non power-of-two)
// scales, which have no E8M0 code (e8m0.h says E8M0_NONE; the caller must refuse them), and gfx942,
// which has no scaled MFMA (this file does not compile there, by design: see the #error).
//
// Tiling and LDS are fp8_gemm.hip's: a 256-thread workgroup (4 waves) per 64x64 C tile, wave w the
// 32x32 quadrant (w / 2, w % 2) as 2x2 MFMA tiles, the 128-block's A and B rows (64 x 128 bytes
// each) staged in LDS with rows padded to 136 bytes (17 KiB).
#include "e8m0.h"
#include "hip_common.h"

#if defined(__HIP_DEVICE_COMPILE__) && !defined(__gfx950__)
#error "fp8_gemm_mx.hip: v_mfma_scale_f32_16x16x128_f8f6f4 exists on gfx950 only; gfx942 uses fp8_gemm.hip"
#endif

#define BM 64
#define BN 64
#define BK 128
#define LDS_ROW 136

typedef float f32x4 __attribute__((ext_vector_type(4)));
typedef int i32x8 __attribute__((ext_vector_type(8)));
typedef uint32_t u32x2 __attribute__((ext_vector_type(2)));
typedef uint32_t u32x4 __attribute__((ext_vector_type(4)));

#if defined(__HIP_DEVICE_COMPILE__)
// 32 consecutive K bytes of one LDS row: four 8-byte reads (a padded row is 8-byte aligned only)
DSP_DEVICE DSP_INLINE i32x8 lds_row32(const uint8_t* p) {
  u32x2 q0 = *(const u32x2*)p, q1 = *(const u32x2*)(p + 8), q2 = *(const u32x2*)(p + 16), q3 = *(const u32x2*)(p + 24);
  return i32x8{(int)q0.x, (int)q0.y, (int)q1.x, (int)q1.y, (int)q2.x, (int)q2.y, (int)q3.x, (int)q3.y};
}

DSP_DEVICE DSP_INLINE f32x4 mfma_mx(i32x8 a, i32x8 b, f32x4 c, int sa, int sb) {
  return __builtin_amdgcn_mfma_scale_f32_16x16x128_f8f6f4(a, b, c, 0, 0, 0, sa, 0, sb);
}
#endif

DSP_GLOBAL void __attribute__((amdgpu_flat_work_group_size(256, 256)))
dsp_fp8_gemm_e8m0(const uint8_t* __restrict__ a, const float* __restrict__ sa, const uint8_t* __restrict__ b,
                  const float* __restrict__ sb, uint16_t* __restrict__ c, int M, int N, int K) {
#if defined(__HIP_DEVICE_COMPILE__)
  DSP_SHARED uint8_t la[BM * LDS_ROW];
  DSP_SHARED uint8_t lb[BN * LDS_ROW];
  const int t = tid(), lane = lane_id(), wave = t >> 6;
  const int m0 = bid_y() * BM, n0 = bid_x() * BN;
  const int kblocks = K / BK;
  const int wm = (wave >> 1) * 32, wn = (wave & 1) * 32;
  const int quarter = lane / 16;  // which 32-block of the 128 this lane feeds
  f32x4 acc[2][2] = {};
  for (int kb = 0; kb < kblocks; ++kb) {
    // rows past M / N are zero-filled and get scale byte 127 (2^0): never read from memory (SPEC §10)
    for (int i = t; i < BM * BK / 16; i += 256) {
      int r = i / (BK / 16), col = (i % (BK / 16)) * 16;
      u32x4 va = {0, 0, 0, 0}, vb = {0, 0, 0, 0};
      if (m0 + r < M) va = *(const u32x4*)(a + (long)(m0 + r) * K + kb * BK + col);
      if (n0 + r < N) vb = *(const u32x4*)(b + (long)(n0 + r) * K + kb * BK + col);
      *(u32x2*)(la + r * LDS_ROW + col) = va.xy;
      *(u32x2*)(la + r * LDS_ROW + col + 8) = va.zw;
      *(u32x2*)(lb + r * LDS_ROW + col) = vb.xy;
      *(u32x2*)(lb + r * LDS_ROW + col + 8) = vb.zw;
    }
    barrier();
    // the 64-wide N tile lies inside one 128-row weight block: one B scale per block for the tile
    const int kb32 = 4 * kb + quarter;
    const int sbv = n0 < N ? mx_scale_b(sb, kblocks, n0, kb32) : 127;
    i32x8 fa[2], fb[2];
    int sav[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int ra = wm + 16 * i + lane % 16;
      fa[i] = lds_row32(la + ra * LDS_ROW + 32 * quarter);
      fb[i] = lds_row32(lb + (wn + 16 * i + lane % 16) * LDS_ROW + 32 * quarter);
      sav[i] = m0 + ra < M ? mx_scale_a(sa, kblocks, m0 + ra, kb32) : 127;
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) acc[i][j] = mfma_mx(fa[i], fb[j], acc[i][j], sav[i], sbv);
    barrier();  // the next block overwrites the tiles
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        int m = m0 + wm + 16 * i + 4 * quarter + r, n = n0 + wn + 16 * j + lane % 16;
        if (m < M && n < N) c[(long)m * N + n] = f32_to_bf16(acc[i][j][r]);
      }
#endif
}
