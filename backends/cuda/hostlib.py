"""The kernels' scalar building blocks (``cuda_kernels/include/dsport/*.cuh``)
compiled by the host C++ compiler into a small shared library and called
through ctypes, so they can be held bit-exact against the reference here.

What this checks: FP8 encode/decode, group scales (ue8m0 rounding, the amax
floor, non-finite propagation), the 656-byte cache row, the top-k radix key
and tie rule (a sequential run of the kernel's passes), the online-softmax
merge (both the CUDA-core kernel's and the wgmma kernel's step), and the wgmma
sparse kernel's tile arithmetic (shared-memory offsets, the descriptors it
passes, the accumulator fragment map, its shared-memory budget). What it
cannot check: thread mapping beyond that map, warp shuffles, barriers and
fences, and whether the hardware reads a descriptor as the PTX ISA describes
— those run only on a GPU.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .kernels import HEADERS, HOST_SOURCE
from ...core.build import ToolchainMissing

log = logging.getLogger(__name__)

# -ffp-contract=off: no fused multiply-add the device code would not have either
# (the checked arithmetic has no a*b+c whose rounding matters, but a silent FMA
# would make "bit-exact" depend on the host compiler's mood)
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Werror")
FMT = {"e4m3fn": 0, "e4m3fnuz": 1}
SCALE = {"fp32": 0, "ue8m0": 1}


def cache_dir() -> Path:
    return Path(os.environ.get("DSPORT_CACHE", Path.home() / ".cache" / "dsport")) / "cuda-host"


def _key(cxx: str) -> str:
    h = hashlib.sha256()
    for p in (HOST_SOURCE, *HEADERS):
        h.update(p.name.encode() + p.read_bytes())
    h.update(" ".join((cxx, *FLAGS)).encode())
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """Build (once per source hash) and load the host library."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ToolchainMissing("no host C++ compiler (g++) on PATH")
    out = cache_dir() / _key(cxx) / "libdsport_cuda_host.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        res = subprocess.run([cxx, *FLAGS, "-o", str(tmp), str(HOST_SOURCE)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"host build of {HOST_SOURCE.name} failed:\n{res.stderr[-2000:]}")
        tmp.replace(out)  # atomic: a concurrent build never sees half a library
    lib = ctypes.CDLL(str(out))
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ds_fp8_encode.argtypes = [p, p, i64, i32]
    lib.ds_fp8_decode.argtypes = [p, p, i64, i32]
    lib.ds_bf16_round.argtypes = [p, p, i64]
    lib.ds_act_quant.argtypes = [p, p, p, i64, i64, i32, i32, i32]
    lib.ds_mla_pack.argtypes = [p, p, i64, i32]
    lib.ds_mla_unpack.argtypes = [p, p, i64, i32]
    lib.ds_topk_row.argtypes = [p, i64, i64, i32, p]
    lib.ds_sparse_attn_row.argtypes = [p, p, p, i64, i32, i32, p, p, p]
    lib.ds_sparse_attn_row_wgmma.argtypes = [p, p, p, i64, i32, i32, p, p, p]
    lib.ds_wg_tile_offsets.argtypes = [p, p, i64, i32, p]
    lib.ds_wg_desc.argtypes = [i32, i32, i32, p]
    lib.ds_wg_desc_bits.argtypes = [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32]
    lib.ds_wg_desc_bits.restype = ctypes.c_uint64
    lib.ds_wg_acc_map.argtypes = [i32, p, p]
    lib.ds_wg_smem.argtypes = [p]
    return lib


def _f32(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to(torch.float32).numpy())


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def fp8_encode(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """float32 values -> FP8 bytes (uint8), the kernels' saturating RNE cast."""
    a = _f32(x)
    y = np.empty(a.shape, dtype=np.uint8)
    library().ds_fp8_encode(_ptr(a), _ptr(y), a.size, FMT[fmt])
    return torch.from_numpy(y)


def fp8_decode(y: torch.Tensor, fmt: str) -> torch.Tensor:
    b = np.ascontiguousarray(y.numpy().astype(np.uint8))
    x = np.empty(b.shape, dtype=np.float32)
    library().ds_fp8_decode(_ptr(b), _ptr(x), b.size, FMT[fmt])
    return torch.from_numpy(x)


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """float32 -> bf16 (round to nearest even, the kernels' f32_to_bf16) -> float32."""
    a = _f32(x)
    y = np.empty(a.shape, dtype=np.float32)
    library().ds_bf16_round(_ptr(a), _ptr(y), a.size)
    return torch.from_numpy(y)


def act_quant(x: torch.Tensor, block: int, fmt: str, scale_fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP8 bytes [..., N] uint8, scales [..., N // block] fp32), the kernel's group arithmetic."""
    a = _f32(x)
    n = a.shape[-1]
    rows = a.size // n if n else 0
    y = np.empty(a.shape, dtype=np.uint8)
    s = np.empty((*a.shape[:-1], n // block), dtype=np.float32)
    library().ds_act_quant(_ptr(a), _ptr(y), _ptr(s), rows, n, block, FMT[fmt], SCALE[scale_fmt])
    return torch.from_numpy(y), torch.from_numpy(s)


def mla_cache_pack(kv: torch.Tensor, fmt: str) -> torch.Tensor:
    a = _f32(kv)
    out = np.empty((a.shape[0], 656), dtype=np.uint8)
    library().ds_mla_pack(_ptr(a), _ptr(out), a.shape[0], FMT[fmt])
    return torch.from_numpy(out)


def mla_cache_unpack(cache: torch.Tensor, fmt: str) -> torch.Tensor:
    b = np.ascontiguousarray(cache.numpy())
    out = np.empty((b.shape[0], 576), dtype=np.float32)
    library().ds_mla_unpack(_ptr(b), _ptr(out), b.shape[0], FMT[fmt])
    return torch.from_numpy(out)


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None, ke: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel's radix selection run sequentially per row: indices [T, k] int32, -1 padded."""
    a = _f32(logits)
    t_len, s_len = a.shape
    out = np.empty((t_len, k), dtype=np.int32)
    for t in range(t_len):
        lo, hi = (0, s_len) if ks is None else (int(ks[t]), int(ke[t]))
        row = a[t]
        library().ds_topk_row(_ptr(row), lo, hi, k, out[t].ctypes.data)
    return torch.from_numpy(out)


def sparse_attn_row(scores: torch.Tensor, valid: torch.Tensor, v: torch.Tensor, tile: int = 64,
                    wgmma: bool = False) -> tuple[torch.Tensor, float, float]:
    """One query row merged tile by tile: (out [dv], lse (natural), max logit). ``wgmma``: the
    tensor-core kernel's step (new max first, P rounded to bf16 for the product)."""
    s = _f32(scores)
    m = np.ascontiguousarray(valid.numpy().astype(np.uint8))
    vv = _f32(v)
    dv = vv.shape[-1]
    out = np.empty(dv, dtype=np.float32)
    lse = np.empty(1, dtype=np.float32)
    mx = np.empty(1, dtype=np.float32)
    fn = library().ds_sparse_attn_row_wgmma if wgmma else library().ds_sparse_attn_row
    fn(_ptr(s), _ptr(m), _ptr(vv), s.shape[0], dv, tile, _ptr(out), _ptr(lse), _ptr(mx))
    return torch.from_numpy(out), float(lse[0]), float(mx[0])


def _i32(x) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.int32))


def wg_tile_offsets(rows, kbytes, row_bytes: int) -> np.ndarray:
    """The wgmma kernel's shared-memory byte offsets of (row, k-byte) in a tile of ``row_bytes`` rows."""
    r, k = _i32(rows), _i32(kbytes)
    out = np.empty(r.shape, dtype=np.int32)
    library().ds_wg_tile_offsets(_ptr(r), _ptr(k), r.size, row_bytes, _ptr(out))
    return out


WG_OPERANDS = {"q": 0, "keys": 1, "p": 2, "values": 3}


def wg_desc(operand: str, wg: int, ks: int) -> tuple[int, int, int]:
    """(start, LBO, SBO) the wgmma kernel passes for ``operand`` at k16 step ``ks``."""
    out = np.empty(3, dtype=np.int32)
    library().ds_wg_desc(WG_OPERANDS[operand], wg, ks, _ptr(out))
    return int(out[0]), int(out[1]), int(out[2])


def wg_desc_bits(addr: int, lbo: int, sbo: int) -> int:
    return int(library().ds_wg_desc_bits(addr, lbo, sbo))


def wg_acc_map(regs: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of accumulator register i of warpgroup thread t, as [128, regs] arrays."""
    rows, cols = np.empty((128, regs), dtype=np.int32), np.empty((128, regs), dtype=np.int32)
    library().ds_wg_acc_map(regs, _ptr(rows), _ptr(cols))
    return rows, cols


WG_SMEM_REGIONS = ("q", "keys", "p", "row_max", "row_sum", "where", "valid")


def wg_smem() -> tuple[dict[str, int], int]:
    """The wgmma kernel's shared-memory regions (byte offsets) and its total dynamic shared memory."""
    out = np.empty(8, dtype=np.int32)
    library().ds_wg_smem(_ptr(out))
    return dict(zip(WG_SMEM_REGIONS, out[:7].tolist())), int(out[7])
