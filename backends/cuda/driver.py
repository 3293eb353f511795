"""The CUDA driver API through ctypes: enough to probe a device, load a cubin
and launch a kernel on torch's current stream. No CUDA build of torch is
needed to build, and no extra Python package to launch (``libcuda`` comes with
the NVIDIA driver); the tensors themselves must live on the GPU, which needs a
CUDA build of torch at run time."""
from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any

# CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR
_CC_MAJOR, _CC_MINOR = 75, 76
# CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
_MAX_DYN_SMEM = 8


class DriverError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def libcuda() -> ctypes.CDLL:
    """The driver library; OSError when no NVIDIA driver is installed."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    return ctypes.CDLL(name)


def check(rc: int, what: str) -> None:
    if rc != 0:
        msg = ctypes.c_char_p()
        try:
            libcuda().cuGetErrorString(rc, ctypes.byref(msg))
        except Exception:  # noqa: BLE001 - the message is a courtesy
            pass
        raise DriverError(f"{what} failed: CUresult {rc} ({msg.value.decode() if msg.value else 'unknown'})")


def devices() -> list[tuple[int, int]]:
    """(major, minor) compute capability of every device; raises DriverError/OSError."""
    lib = libcuda()
    check(lib.cuInit(0), "cuInit")
    n = ctypes.c_int()
    check(lib.cuDeviceGetCount(ctypes.byref(n)), "cuDeviceGetCount")
    out = []
    for i in range(n.value):
        dev, ma, mi = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        check(lib.cuDeviceGet(ctypes.byref(dev), i), "cuDeviceGet")
        check(lib.cuDeviceGetAttribute(ctypes.byref(ma), _CC_MAJOR, dev), "cuDeviceGetAttribute")
        check(lib.cuDeviceGetAttribute(ctypes.byref(mi), _CC_MINOR, dev), "cuDeviceGetAttribute")
        out.append((ma.value, mi.value))
    return out


class Kernel:
    """One entry point of a loaded cubin (in torch's current context)."""

    def __init__(self, cubin: bytes, name: str, dynamic_smem: int = 0):
        lib = libcuda()
        self._image = ctypes.create_string_buffer(cubin)  # the module keeps no copy until loaded
        self.module = ctypes.c_void_p()
        check(lib.cuModuleLoadData(ctypes.byref(self.module), self._image), f"cuModuleLoadData({name})")
        self.func = ctypes.c_void_p()
        check(lib.cuModuleGetFunction(ctypes.byref(self.func), self.module, name.encode()), f"cuModuleGetFunction({name})")
        self.name, self.dynamic_smem = name, dynamic_smem
        if dynamic_smem > 48 * 1024:
            check(lib.cuFuncSetAttribute(self.func, _MAX_DYN_SMEM, dynamic_smem), f"cuFuncSetAttribute({name})")

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: list[Any], stream: int) -> None:
        if min(grid) <= 0:
            return  # nothing to launch (T = 0): a zero grid is an error to the driver
        holders = [a if isinstance(a, ctypes._SimpleCData) else ctypes.c_void_p(a) for a in args]
        params = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
        check(libcuda().cuLaunchKernel(self.func, *grid, *block, self.dynamic_smem, ctypes.c_void_p(stream), params, None),
              f"cuLaunchKernel({self.name})")
