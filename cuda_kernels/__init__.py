"""CUDA C++ kernels for H800/H200 (sm_90a) and their loaders.

Empty so far: the NVIDIA path that builds and is checked today is the Triton
backend (``dsport.backends.triton``, AOT to sm_90a cubins with wgmma) and the
TileLang kernels lowered to CUDA (``dsport.tilelang_kernels``, nvcc to
sm_90a). Hand-written CUDA belongs here, as a backend op table in
``dsport.backends`` whose ``build()`` compiles with nvcc like theirs.
"""
