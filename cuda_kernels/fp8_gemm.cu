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

constexpr int BM = 64, BN = 128, BK = 128, STAGES = 2, THREADS = 128;
constexpr int CORE = 128;                 // bytes of one core matrix: 8 rows x 16 B
constexpr int ROW_GROUP = (BK / 16) * CORE;  // bytes between 8-row groups (SBO): 1024
constexpr int A_BYTES = BM * BK, B_BYTES = BN * BK;

// Byte offset of (row, k-byte) in the core-matrix layout of a [rows][BK] tile.
__device__ __forceinline__ int core_offset(int row, int kbyte) {
  return (row >> 3) * ROW_GROUP + (kbyte >> 4) * CORE + (row & 7) * 16 + (kbyte & 15);
}

// wgmma shared-memory descriptor, no swizzle: start address, leading byte
// offset (between K-adjacent core matrices: CORE) and stride byte offset
// (between M/N-adjacent 8-row groups: ROW_GROUP), all in 16-byte units.
__device__ __forceinline__ uint64_t smem_desc(const void* p) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(CORE >> 4) << 16) | ((uint64_t)(ROW_GROUP >> 4) << 32);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}

// d += A(desc) * B(desc) over one k32 step; scale_d == 0 overwrites d.
// 64 fp32 accumulators per thread: the m64n128 fragment of one warpgroup.
__device__ __forceinline__ void wgmma_m64n128k32_e4m3(float (&d)[64], uint64_t da, uint64_t db, int scale_d) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, %64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(da), "l"(db), "r"(scale_d));
}

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
