"""The HIP kernels' scalar building blocks, compiled for the CPU and called through ctypes.

``hip_kernels/host_check.cpp`` includes the same ``__host__ __device__`` headers
the kernels include (``fp8.h``, ``mla_cache.h``, ``softmax.h``, ``topk_key.h``)
and is compiled here with g++ into a small shared library, cached under a key
made of the sources' and the flags' hash. What it checks is the arithmetic;
the device-only paths (the conversion instructions, MFMA, LDS, cross-lane
reductions) run only on a gfx942 / gfx950 machine.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import torch

from ...core.build import ToolchainMissing
from ...core.fp8 import Fp8Format, ScaleFormat, fp8_format, scale_format

KERNELS = Path(__file__).resolve().parents[2] / "hip_kernels"
SOURCES = ("host_check.cpp", "hip_common.h", "fp8.h", "mla_cache.h", "softmax.h", "topk_key.h", "e8m0.h")
# -O2 without -ffast-math: rintf must round to nearest even and the float32 divide stay IEEE
FLAGS = ("-O2", "-std=c++17", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off")
FMT_CODE = {"e4m3fn": 0, "e4m3fnuz": 1}


def cache_root() -> Path:
    return Path(os.environ.get("DSPORT_CACHE", Path.home() / ".cache" / "dsport"))


def source_key(names: tuple[str, ...], flags: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + (KERNELS / n).read_bytes())
    h.update("\0".join(flags).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """The compiled host-check library (built once per source+flags hash)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ToolchainMissing("no C++ compiler (g++) on PATH for the HIP building blocks' host check")
    out = cache_root() / "hip-host" / source_key(SOURCES, FLAGS) / "libdsport_hip_host.so"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([cxx, *FLAGS, f"-I{KERNELS}", "-o", str(tmp), str(KERNELS / "host_check.cpp")],
                       check=True, capture_output=True, text=True)
        tmp.replace(out)  # atomic: concurrent test workers never load a half-written library
    return ctypes.CDLL(str(out))


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to(torch.float32).contiguous()


def _elementwise(fn: str, src: torch.Tensor, out_dtype: torch.dtype, *extra: int) -> torch.Tensor:
    """``dsp_<fn>(src, out, n, *extra)`` of the host library: one output element per input element."""
    out = torch.empty(src.shape, dtype=out_dtype)
    getattr(lib(), f"dsp_{fn}")(_p(src), _p(out), ctypes.c_int64(src.numel()), *extra)
    return out


def _bytes(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.uint8)


def encode(x: torch.Tensor, fmt: str | Fp8Format) -> torch.Tensor:
    """float -> fp8 bytes (uint8) with the kernels' encoder."""
    return _elementwise("fp8_encode", _f32(x), torch.uint8, FMT_CODE[fp8_format(fmt, "hip.encode").name])


def decode(b: torch.Tensor, fmt: str | Fp8Format) -> torch.Tensor:
    return _elementwise("fp8_decode", _bytes(b), torch.float32, FMT_CODE[fp8_format(fmt, "hip.decode").name])


def e5m2_encode(x: torch.Tensor) -> torch.Tensor:
    """float -> OCP e5m2 bytes, saturating finite (TileLang's gfx950 e5m2 type)."""
    return _elementwise("e5m2_encode", _f32(x), torch.uint8)


def e5m2_decode(b: torch.Tensor) -> torch.Tensor:
    return _elementwise("e5m2_decode", _bytes(b), torch.float32)


def ue8m0_ceil(s: torch.Tensor) -> torch.Tensor:
    return _elementwise("ue8m0_ceil", _f32(s), torch.float32)


def e8m0_decode(b: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes -> float32 with the kernels' decoder (e8m0.h)."""
    return _elementwise("e8m0_decode", _bytes(b), torch.float32)


def e8m0_encode(s: torch.Tensor) -> torch.Tensor:
    """fp32 scales -> their exact E8M0 code (int32), or E8M0_NONE (0x1FF) where there is none."""
    return _elementwise("e8m0_encode", _f32(s), torch.int32)


def mx_scales(sa: torch.Tensor, sb: torch.Tensor, m: int, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The scale byte dsp_fp8_gemm_e8m0 feeds the MFMA for every (row, 32-block of K): [M, K/32], [N, K/32]."""
    a, b = _f32(sa), _f32(sb)
    out_a = torch.empty(m, k // 32, dtype=torch.int32)
    out_b = torch.empty(n, k // 32, dtype=torch.int32)
    lib().dsp_mx_scales(_p(a), _p(b), m, n, k, _p(out_a), _p(out_b))
    return out_a, out_b


def act_quant(x: torch.Tensor, block: int = 128, fmt: str | Fp8Format = "e4m3fn",
              scale_fmt: str | ScaleFormat = "ue8m0") -> tuple[torch.Tensor, torch.Tensor]:
    f, sf = fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant")
    src = _f32(x)
    n = src.shape[-1]
    rows = src.numel() // n if n else 0
    y = torch.empty(src.shape, dtype=torch.uint8)
    s = torch.empty(*src.shape[:-1], n // block, dtype=torch.float32)
    lib().dsp_act_quant(_p(src), ctypes.c_int64(rows), ctypes.c_int64(n), block, FMT_CODE[f.name],
                        int(sf.name == "ue8m0"), _p(y), _p(s))
    return y.view(f.dtype), s


def mla_cache_pack(kv: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    f = fp8_format(fmt, "mla_cache_pack")
    src = _f32(kv)
    out = torch.empty(src.shape[0], 656, dtype=torch.uint8)
    lib().dsp_mla_cache_pack(_p(src), ctypes.c_int64(src.shape[0]), FMT_CODE[f.name], _p(out))
    return out


def mla_cache_unpack(cache: torch.Tensor, fmt: str | Fp8Format = "e4m3fn") -> torch.Tensor:
    f = fp8_format(fmt, "mla_cache_unpack")
    src = cache.contiguous()
    out = torch.empty(src.shape[0], 576, dtype=torch.float32)
    lib().dsp_mla_cache_unpack(_p(src), ctypes.c_int64(src.shape[0]), FMT_CODE[f.name], _p(out))
    return out


def topk_keys(x: torch.Tensor) -> torch.Tensor:
    src = _f32(x)
    out = torch.empty(src.shape, dtype=torch.int64)
    keys = torch.empty(src.shape, dtype=torch.int32)
    lib().dsp_topk_keys(_p(src), _p(keys), ctypes.c_int64(src.numel()))
    out.copy_(keys.long() & 0xFFFFFFFF)  # uint32 as a non-negative int64
    return out


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None, ke: torch.Tensor | None = None) -> torch.Tensor:
    src = _f32(logits)
    t_len, s_len = src.shape
    out = torch.empty(t_len, k, dtype=torch.int32)
    ks_, ke_ = (None, None) if ks is None else (ks.int().contiguous(), ke.int().contiguous())
    lib().dsp_topk_select(_p(src), ctypes.c_int64(t_len), ctypes.c_int64(s_len), k,
                          None if ks_ is None else _p(ks_), None if ke_ is None else _p(ke_), _p(out))
    return out


def softmax_merge(m: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Pairs m, l of shape [N, 2] -> merged (m, l) and the two accumulator weights."""
    m_, l_ = _f32(m), _f32(l)
    n = m_.shape[0]
    outs = [torch.empty(n, dtype=torch.float32) for _ in range(4)]
    lib().dsp_softmax_merge(_p(m_), _p(l_), ctypes.c_int64(n), *map(_p, outs))
    return tuple(outs)


def sparse_mla_prefill(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float,
                       d_v: int = 512, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sparse-MLA kernels' arithmetic (fp32, chunked online softmax, merged partials) on the CPU."""
    qf, kvf = _f32(q), _f32(kv.reshape(kv.shape[0], -1))
    t_len, h = qf.shape[:2]
    idx = indices.reshape(t_len, indices.shape[-1]).int().contiguous()
    d = qf.shape[-1]
    out = torch.empty(t_len, h, d_v, dtype=torch.float32)
    lse = torch.empty(t_len, h, dtype=torch.float32)
    mx = torch.empty(t_len, h, dtype=torch.float32)
    rc = lib().dsp_sparse_mla(_p(qf), _p(kvf), _p(idx), ctypes.c_int64(t_len), h, ctypes.c_int64(kvf.shape[0]), idx.shape[1], d, d_v,
                         ctypes.c_float(sm_scale), chunk, _p(out), _p(lse), _p(mx))
    if rc:
        raise ValueError(f"sparse_mla_prefill (hip host): d_v {d_v} must be <= 512 and <= d_qk {d}")
    return out, lse, mx
