"""Test-only backend: one case aborts the process, one hangs, the rest are right."""
import os
import time

from .common import via_reference

NAME = "unstable"


def act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0"):
    if tuple(x.shape) == (2, 128):  # act_quant/tiny
        os.abort()
    return via_reference("act_quant", x=x, block=block, fmt=fmt, scale_fmt=scale_fmt)


def dequant(y, s, block=128):
    if y.shape[0] == 9:  # dequant/fnuz
        time.sleep(3600)
    return via_reference("dequant", y=y, s=s, block=block)


OPS = {"act_quant": act_quant, "dequant": dequant}


def available():
    return True, "test-only backend"


TARGETS = ("sm_90a", "gfx950")


def build(target, out_dir):
    """Two kernels per target: one compiles, one fails (as a real build can)."""
    from dsport.core.build import KernelBuild

    return [KernelBuild("unstable", "act_quant_kernel", ("act_quant",), target, "built", artifact=f"{out_dir}/act_quant.bin",
                        registers=40, spills=0, matrix_instr=None),
            KernelBuild("unstable", "dequant_kernel", ("dequant",), target, "failed", detail="ptxas: out of registers")]
