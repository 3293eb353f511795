"""The tilelang backend: DeepSeek-V3.2's TileLang kernels as an op table.

Here (no GPU) the kernels execute on CPU through TileLang's ``c`` target,
compiled once per static configuration and cached; ``build(target, out_dir)``
lowers the same tile programs for sm_90a (cubins, with nvcc) and for gfx942 and
gfx950 (code objects, with the HIP toolchain of :mod:`.hip`; on a ROCm tree
older than 6.3, gfx950 gets dsport's OCP FP8 header overlay) without executing them.
"""
from __future__ import annotations

import importlib.util
import shutil

from .aot import TARGETS, build
from .capabilities import CAPABILITIES
from .ops import OPS

NAME = "tilelang"
DESCRIPTION = "TileLang tile programs (dsport/tilelang_kernels) run on CPU via the c target; built for sm_90a, gfx942 and gfx950"
PRECISION = ("fp32 accumulation; bf16/fp8 storage converted bit-exactly; fp8 GEMM partial sums promoted per 128; "
             "attention probabilities rounded to bf16 before the value GEMM, as on the GPU")

__all__ = ["NAME", "DESCRIPTION", "PRECISION", "OPS", "CAPABILITIES", "TARGETS", "build", "available"]


def available() -> tuple[bool, str]:
    if importlib.util.find_spec("tilelang") is None:
        return False, "the tilelang package is not installed (pip install 'dsport[tilelang]')"
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return False, "no C++ compiler on PATH: TileLang's c target compiles kernels with g++"
    return True, f"tilelang installed; kernels run on CPU through the c target (compiled with {cxx})"
