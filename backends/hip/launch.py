"""Launching the ``hip_kernels`` code objects on a ROCm machine through the HIP module API.

``hip-python`` (``pip install hip-python``, the ROCm release's version) loads
the code object built by :mod:`.build` with ``hipModuleLoadData`` and launches
a kernel with ``hipModuleLaunchKernel``, its arguments packed from
``tensor.data_ptr()`` and ctypes scalars in the kernel's parameter order. No
part of this module has executed here (no ROCm, no AMD device): the op table
it feeds is only used where :func:`dsport.backends.hip.available` is true, and
its results there are judged by conformance like any other backend's.
"""
from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from typing import Any

import torch

from . import aot as hb
from ...core.errors import ValidationError
from ...core.fp8 import format_for_arch, fp8_format, scale_format


@functools.lru_cache(maxsize=None)
def _function(src: str, kernel: str, target: str) -> Any:
    from hip import hip

    obj, _, _ = hb.compile_file(src, target)
    err, module = hip.hipModuleLoadData(obj.read_bytes())
    _check(err, f"hipModuleLoadData({obj.name})")
    err, fn = hip.hipModuleGetFunction(module, kernel.encode())
    _check(err, f"hipModuleGetFunction({kernel})")
    return fn


def _check(err: Any, what: str) -> None:
    from hip import hip

    if err != hip.hipError_t.hipSuccess:
        raise RuntimeError(f"hip backend: {what} failed: {err}")


def _arg(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return ctypes.c_void_p(v.data_ptr())
    if v is None:
        return ctypes.c_void_p(0)
    return v  # already a ctypes scalar: its width is the kernel parameter's


def launch(src: str, kernel: str, grid: Sequence[int], block: int, args: Sequence[Any], target: str) -> None:
    from hip import hip

    fn = _function(src, kernel, target)
    gx, gy = (list(grid) + [1])[:2]
    if gx == 0 or gy == 0:
        return
    stream = torch.cuda.current_stream().cuda_stream
    err, = hip.hipModuleLaunchKernel(fn, gx, gy, 1, block, 1, 1, 0, stream, None, tuple(_arg(a) for a in args))
    _check(err, f"hipModuleLaunchKernel({kernel})")


def refuse(op: str, kernel_takes: str, got: str) -> None:
    """A shape the kernel was not written for: the case is ``unsupported``. Every such limit is also
    declared in the backend's CAPABILITIES, so that ``refusal()`` answers before the call
    (tests/test_hip_backend.py checks that no accepted conformance case reaches one of these)."""
    raise NotImplementedError(f"{op} (hip kernel): takes {kernel_takes}, got {got}")


def kernel_ops(target: str) -> dict[str, Any]:
    """Ops served by dsport's own kernels (those aiter does not cover in :mod:`.aiter`)."""
    native = format_for_arch(target)
    i64, i32, f32 = ctypes.c_int64, ctypes.c_int32, ctypes.c_float

    def act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0"):
        f, sf = fp8_format(fmt, "act_quant"), scale_format(scale_fmt, "act_quant")
        if f is not native or block != 128:
            refuse("act_quant", f"fmt {native} (the {target} kernel's format) and block 128", f"{f}, block {block}")
        xb = x.to(torch.bfloat16).contiguous()
        y = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
        s = torch.empty(*x.shape[:-1], x.shape[-1] // 128, dtype=torch.float32, device=x.device)
        groups = s.numel()
        launch("act_quant.hip", f"dsp_act_quant_{sf.name}", [(groups + 3) // 4], 256, [xb, y, s, i64(groups)], target)
        return y.view(f.dtype), s

    def rms_norm(x, w, eps=1e-6, residual=None):
        if x.shape[-1] > 7168 or x.dtype != torch.bfloat16:
            refuse("rms_norm", "bf16 rows of at most 7168", f"{x.dtype} rows of {x.shape[-1]}")
        xb, wb = x.contiguous(), w.to(torch.bfloat16).contiguous()
        n, rows = x.shape[-1], x.numel() // max(x.shape[-1], 1)
        y = torch.empty_like(xb)
        if residual is None:
            launch("rms_norm.hip", "dsp_rms_norm", [rows], 256, [xb, wb, y, i32(n), f32(eps)], target)
            return y
        res = torch.empty_like(xb)
        launch("rms_norm.hip", "dsp_rms_norm_residual", [rows], 256,
               [xb, residual.to(torch.bfloat16).contiguous(), wb, y, res, i32(n), f32(eps)], target)
        return y, res

    def moe_gate(x, weight, bias=None, n_group=8, topk_group=4, topk=8, route_scale=2.5, score_func="sigmoid"):
        e, d = weight.shape
        if score_func != "sigmoid" or e > 256 or d > 7168 or topk > 16 or n_group > 31:
            refuse("moe_gate", "sigmoid, E <= 256, D <= 7168, topk <= 16, n_group <= 31",
                   f"{score_func}, E={e}, D={d}, topk={topk}, n_group={n_group}")
        t = x.shape[0]
        w_out = torch.empty(t, topk, dtype=torch.float32, device=x.device)
        ids = torch.empty(t, topk, dtype=torch.int32, device=x.device)
        launch("moe_gate.hip", "dsp_moe_gate", [t], 256,
               [x.to(torch.bfloat16).contiguous(), weight.to(torch.bfloat16).contiguous(),
                None if bias is None else bias.float().contiguous(), i32(d), i32(e), i32(n_group), i32(topk_group),
                i32(topk), f32(route_scale), w_out, ids], target)
        return w_out, ids

    def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
        t, h, dqk = q.shape
        if dqk != 576 or d_v != 512:
            refuse("sparse_mla_prefill", "d_qk 576, d_v 512", f"d_qk {dqk}, d_v {d_v}")
        nk32 = hb.SHARED_LIMIT[target] < 99456
        out = torch.empty(t, h, 512, dtype=torch.bfloat16, device=q.device)
        lse = torch.empty(t, h, dtype=torch.float32, device=q.device)
        mx = torch.empty_like(lse)
        launch("sparse_mla.hip", "dsp_sparse_mla_prefill" + ("_nk32" if nk32 else ""), [t, (h + 15) // 16], 128 if nk32 else 256,
               [q.to(torch.bfloat16).contiguous(), kv.reshape(kv.shape[0], -1).to(torch.bfloat16).contiguous(),
                indices.reshape(t, indices.shape[-1]).int().contiguous(), i64(kv.shape[0]), i32(h), i32(indices.shape[-1]), f32(sm_scale),
                out, lse, mx], target)
        return out, lse, mx

    def mla_cache_pack(kv, fmt="e4m3fn"):
        f = fp8_format(fmt, "mla_cache_pack")
        if f is not native:
            refuse("mla_cache_pack", f"fmt {native} (the {target} kernel's format)", str(f))
        n = kv.shape[0]
        out = torch.empty(n, 656, dtype=torch.uint8, device=kv.device)
        launch("sparse_mla.hip", "dsp_mla_cache_pack", [(n + 3) // 4], 256, [kv.to(torch.bfloat16).contiguous(), i64(n), out], target)
        return out

    return {"act_quant": act_quant, "rms_norm": rms_norm, "moe_gate": moe_gate,
            "sparse_mla_prefill": sparse_mla_prefill, "mla_cache_pack": mla_cache_pack}


def fp8_gemm_e8m0(target: str) -> Any:
    """fp8_gemm on gfx950's E8M0-scaled MFMA (``hip_kernels/fp8_gemm_mx.hip``), for ue8m0 scales only.

    Not an op-table entry: the table's fp8_gemm is aiter's ``gemm_a8w8_blockscale``, which takes fp32
    scales; this launcher is the kernel's way in (and the shape a table entry would have)."""
    if target != "gfx950":
        refuse("fp8_gemm (hip e8m0 kernel)", "gfx950 (v_mfma_scale_f32_16x16x128_f8f6f4 is gfx950-only)", target)
    native = format_for_arch(target)

    def fp8_gemm(a, sa, b, sb):
        m, k = a.shape
        n = b.shape[0]
        if fp8_format(a.dtype, "fp8_gemm", "a") is not native or fp8_format(b.dtype, "fp8_gemm", "b") is not native:
            refuse("fp8_gemm (hip e8m0 kernel)", f"{native} operands", f"{a.dtype}, {b.dtype}")
        for name, s in (("sa", sa), ("sb", sb)):
            bits = s.float().contiguous().view(torch.int32)
            pow2 = (bits > 0) & ((bits & 0x7FFFFF) == 0) & (((bits >> 23) & 0xFF) < 255)
            if not bool(pow2.all()):  # the kernel encodes them with e8m0.h, which has no code for these
                raise ValidationError("fp8_gemm", name, "ue8m0 scales (positive powers of two) for the E8M0-scaled MFMA",
                                      f"a scale of {s.float()[~pow2.view(s.shape)][0].item()}")
        c = torch.empty(m, n, dtype=torch.bfloat16, device=a.device)
        launch("fp8_gemm_mx.hip", "dsp_fp8_gemm_e8m0", [(n + 63) // 64, (m + 63) // 64], 256,
               [a.contiguous(), sa.float().contiguous(), b.contiguous(), sb.float().contiguous(), c,
                ctypes.c_int32(m), ctypes.c_int32(n), ctypes.c_int32(k)], target)
        return c

    return fp8_gemm
