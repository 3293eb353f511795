// fp8_gemm (SPEC §2): C[m, n] = sum_kb (a_kb . b_kb) * sa[m, kb] * sb[n / 128, kb],
// a [M, K] and b [N, K] e4m3fn (both K-major: "NT"), fp32 scales, bf16 out.
//
// Why wgmma: on sm_90 the only FP8 tensor-core path is wgmma (QGMMA in SASS);
// mma.sync with e4m3 operands is emulated by unpacking to f16 HMMA at half
// the rate or worse. wgmma exists only on sm_90a, hence the "a" target.
//
// Precision: the tensor core accumulates a 128-wide K block in fp32 into a
// fresh fragment (scale-d = 0 on the block's first k32 step); that partial is
// then scaled by sa[m, kb] * sb[n/128, kb] and added to the running fp32
// accumulator on the CUDA cores. Promoting every 128 is the spec's formula
// (one fp32-promoted partial per block) and DeepGEMM's: Hopper's FP8 MMA keeps
// only about 14 bits of accumulator mantissa, so a whole-K accumulation in the
// tensor core would drift for K = 7168.
//
// Tiling: one warpgroup (128 threads) per 64 x 128 output tile, BK = 128 = one
// scale block, two smem stages (2 x 24 KB, the 48 KB static limit) filled with
// 16-byte cp.async while the tensor core works on the other stage. Operands
// sit in the no-swizzle "core matrix" layout (8 rows x 16 bytes contiguous),
// which wgmma reads straight from a descriptor. It is chosen for readability:
// its 16-byte-per-row stores conflict in the 32 smem banks, and the production
// step is TMA with the 128-byte swizzle, a producer warp and two consumer
// warpgroups (BM = 128), as DeepGEMM does. Measure before tuning: no H200 run
// of this kernel has happened.
//
// M and N tails are zero-filled in shared memory (cp.async src-size 0), so
// rows past M or N are never read from global memory (SPEC §10).
#include <cuda_bf16.h>
#include <stdint.h>
#include "include/dsport/wgmma.cuh"

using namespace dsport;

constexpr int BM = 64, BN = 128, BK = 128, STAGES = 2, THREADS = 128;
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK;

__device__ __forceinline__ void load_stage(uint8_t* as, uint8_t* bs, const uint8_t* a, const uint8_t* b, int m0,
                                           int n0, int k0, int m, int n, int k) {
  // 8 consecutive threads fetch one 128-byte row slice: coalesced global reads
#pragma unroll
  for (int it = 0; it < A_BYTES / 16 / THREADS; ++it) {
    const int c = threadIdx.x + it * THREADS, row = c >> 3, kb = (c & 7) * 16;
    const bool ok = m0 + row < m;
    cp_async16(as + core_offset(row, kb), a + (long long)(ok ? m0 + row : 0) * k + k0 + kb, ok);
  }
#pragma unroll
  for (int it = 0; it < B_BYTES / 16 / THREADS; ++it) {
    const int c = threadIdx.x + it * THREADS, row = c >> 3, kb = (c & 7) * 16;
    const bool ok = n0 + row < n;
    cp_async16(bs + core_offset(row, kb), b + (long long)(ok ? n0 + row : 0) * k + k0 + kb, ok);
  }
  asm volatile("cp.async.commit_group;\n" ::);
}

// a [M, K], b [N, K] fp8 bytes, K % 128 == 0, rows 16-byte aligned; sa [M, K/128],
// sb [ceil(N/128), K/128] fp32 (row-major); c [M, N] bf16. Grid (ceil(N/128), ceil(M/64)).
extern "C" __global__ void __launch_bounds__(THREADS) fp8_gemm_nt_e4m3(
    const uint8_t* __restrict__ a, const float* __restrict__ sa, const uint8_t* __restrict__ b,
    const float* __restrict__ sb, __nv_bfloat16* __restrict__ c, int m, int n, int k) {
  __shared__ __align__(1024) uint8_t smem_a[STAGES][A_BYTES];
  __shared__ __align__(1024) uint8_t smem_b[STAGES][B_BYTES];
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, nkb = k / BK;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r0 = warp * 16 + (lane >> 2);  // this thread's fragment rows: r0 and r0 + 8
  float acc[64], part[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  load_stage(smem_a[0], smem_b[0], a, b, m0, n0, 0, m, n, k);
  for (int kb = 0; kb < nkb; ++kb) {
    const int s = kb & 1;
    if (kb + 1 < nkb) {
      load_stage(smem_a[s ^ 1], smem_b[s ^ 1], a, b, m0, n0, (kb + 1) * BK, m, n, k);
      asm volatile("cp.async.wait_group 1;\n" ::);
    } else {
      asm volatile("cp.async.wait_group 0;\n" ::);
    }
    __syncthreads();
    // cp.async wrote through the generic proxy; wgmma reads through the async proxy
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int j = 0; j < BK / 32; ++j)  // a k32 step is 2 core matrices (32 bytes) further along K
      wgmma_m64n128k32_e4m3(part, smem_desc(smem_a[s] + j * 2 * CORE), smem_desc(smem_b[s] + j * 2 * CORE), j);
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    // promotion: one fp32 partial per 128-block, scaled on the CUDA cores
    const float sbv = sb[(long long)blockIdx.x * nkb + kb];
    const float s0 = m0 + r0 < m ? sa[(long long)(m0 + r0) * nkb + kb] * sbv : 0.0f;
    const float s1 = m0 + r0 + 8 < m ? sa[(long long)(m0 + r0 + 8) * nkb + kb] * sbv : 0.0f;
#pragma unroll
    for (int i = 0; i < 64; ++i) acc[i] += part[i] * ((i & 2) ? s1 : s0);
    __syncthreads();  // the stage is refilled by the next iteration's cp.async
  }
  // accumulator fragment: register i holds row r0 + 8 * ((i >> 1) & 1), column 8 * (i >> 2) + 2 * (lane & 3) + (i & 1)
#pragma unroll
  for (int i = 0; i < 64; i += 2) {
    const int row = m0 + r0 + ((i & 2) ? 8 : 0), col = n0 + 8 * (i >> 2) + 2 * (lane & 3);
    if (row >= m) continue;
    if (col + 1 < n && (n & 1) == 0) {  // a bf16x2 store needs 4-byte alignment
      *reinterpret_cast<__nv_bfloat162*>(c + (long long)row * n + col) = __floats2bfloat162_rn(acc[i], acc[i + 1]);
    } else {
      if (col < n) c[(long long)row * n + col] = __float2bfloat16_rn(acc[i]);
      if (col + 1 < n) c[(long long)row * n + col + 1] = __float2bfloat16_rn(acc[i + 1]);
    }
  }
}
