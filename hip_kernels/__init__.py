"""HIP C++ kernels for MI350 (gfx950) and MI300 (gfx942).

Empty so far: the AMD code that builds today is the Triton backend's
(gfx950 and gfx942 code objects with mfma). TileLang lowers to HIP source for
gfx950, which needs the HIP headers to compile. Note the FP8 flavour: gfx942
computes in e4m3fnuz (max 240), gfx950 in e4m3fn (``dsport.core.fp8``).
"""
