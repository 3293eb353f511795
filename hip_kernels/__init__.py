"""HIP C++ kernels for MI350 (gfx950) and MI300 (gfx942), one file per op family.

They are written on clang's amdgcn builtins (no ROCm header, no device
library), so the clang of the ``ziglang`` wheel builds them here
(:mod:`dsport.backends.hip.aot`). The scalar arithmetic lives in
``__host__ __device__`` headers (``fp8.h``, ``e8m0.h``, ``mla_cache.h``, ``softmax.h``,
``topk_key.h``) that ``host_check.cpp`` also compiles with g++ for the CPU
check (:mod:`dsport.backends.hip.host`). ``ocp_fp8/`` is the OCP FP8 overlay
of ROCm's ``amd_hip_fp8.h`` that TileLang's gfx950 builds use on ROCm < 6.3.
The FP8 flavour is the target's: e4m3fnuz on gfx942, e4m3fn on gfx950
(``dsport.core.fp8``); ``fp8_gemm_mx.hip`` (the E8M0-scaled MFMA) is gfx950's alone.
"""
