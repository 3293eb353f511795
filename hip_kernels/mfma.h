// Matrix-core operand types and the lane layout of the two MFMA shapes the
// kernels use. The layout is the one the instruction defines for wave64; it is
// written down once here because every kernel indexes its LDS tiles by it.
//
// v_mfma_f32_16x16x32_fp8_fp8 (gfx942, gfx950): A 16x32, B 32x16, D 16x16 fp32.
//   lane l supplies A[l % 16][8*(l/16) .. +8) and B[8*(l/16) .. +8)[l % 16] as 8 bytes,
//   and holds D[4*(l/16) + i][l % 16], i = 0..3.
//   The bytes are read in the target's own FP8 format (fnuz on gfx942, fn on gfx950):
//   there is no format operand, so bytes quantized for the other target are off by 2x.
// v_mfma_f32_16x16x16_bf16 (the _1k form, gfx90a+): the same with 4 bf16 per lane,
//   A[l % 16][4*(l/16) .. +4).
#pragma once
#include "hip_common.h"

typedef float f32x4 __attribute__((ext_vector_type(4)));
typedef short bf16x4 __attribute__((ext_vector_type(4)));

#if defined(__HIP_DEVICE_COMPILE__)
DSP_DEVICE DSP_INLINE f32x4 mfma_fp8(long a, long b, f32x4 c) { return __builtin_amdgcn_mfma_f32_16x16x32_fp8_fp8(a, b, c, 0, 0, 0); }
DSP_DEVICE DSP_INLINE f32x4 mfma_bf16(bf16x4 a, bf16x4 b, f32x4 c) { return __builtin_amdgcn_mfma_f32_16x16x16bf16_1k(a, b, c, 0, 0, 0); }
#endif
