"""HIP C++ kernels for MI350 (gfx950) and MI300 (gfx942).

Empty so far: the AMD code that builds today is the Triton backend's
(gfx950 and gfx942 code objects with mfma) and the TileLang kernels' HIP
(gfx942 code objects; gfx950 with a ROCm >= 6.3 tree), compiled by the
toolchain in ``dsport.backends.tilelang.hip``, which a HIP C++ kernel here
would reuse. Note the FP8 flavour: gfx942 computes in e4m3fnuz (max 240),
gfx950 in e4m3fn (``dsport.core.fp8``).
"""
