"""CUDA C++ kernels for H800/H200 (sm_90a), one ``.cu`` file per op family,
on the scalar headers in ``include/dsport/`` (``__host__ __device__``: the
same FP8, cache-row, radix and softmax arithmetic also compiles with g++ into
``host_check.cpp``'s library, which the tests hold against the reference).

The op table, the nvcc build and the driver-API launcher are in
``dsport.backends.cuda``; ``h200-check.sh`` is the script for a machine with
an H200.
"""
