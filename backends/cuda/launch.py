"""The own kernels as dsport ops: argument checks the kernels need beyond the
spec (declared in CAPABILITIES, so a conforming call never fails here), the
grid, and a launch on torch's current stream. Runs only where ``available()``
says so: an sm_90 device, the driver, and torch with CUDA."""
from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path

import torch

from .aot import cache_root, compile_file
from .driver import Kernel
from .kernels import KERNEL_FILES

_I64, _I32, _F32 = ctypes.c_longlong, ctypes.c_int, ctypes.c_float


def kernel(name: str) -> Kernel:
    """Entry point ``name`` loaded into the current device's context (torch's)."""
    return _kernel(name, torch.cuda.current_device())


@lru_cache(maxsize=None)
def _kernel(name: str, device: int) -> Kernel:  # a module is loaded per context, so per device
    kf = next(f for f in KERNEL_FILES if name in f.kernels)
    info = compile_file(kf, "sm_90a", cache_root())
    if "error" in info:
        raise RuntimeError(f"cuda kernel {name}: build failed: {info['error']}")
    return Kernel(Path(info["cubin"]).read_bytes(), name)


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def act_quant(x: torch.Tensor, block: int = 128, fmt: str = "e4m3fn", scale_fmt: str = "ue8m0"):
    if block != 128:
        raise NotImplementedError("act_quant: the cuda kernel maps one warp to a 128-element group (block=128 only)")
    fmt, scale_fmt = str(fmt), str(scale_fmt)
    xc = x.contiguous()
    y = torch.empty(x.shape, dtype=torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e4m3fnuz, device=x.device)
    s = torch.empty((*x.shape[:-1], x.shape[-1] // 128), dtype=torch.float32, device=x.device)
    groups = s.numel()
    kernel(f"act_quant_{fmt}_{scale_fmt}")(((groups + 7) // 8, 1, 1), (256, 1, 1),
                                           [_p(xc), _p(y), _p(s), _I64(groups)], _stream())
    return y, s


def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    kernel("fp8_gemm_nt_e4m3")(((n + 127) // 128, (m + 63) // 64, 1), (128, 1, 1),
                               [_p(a.contiguous()), _p(sa.float().contiguous()), _p(b.contiguous()),
                                _p(sb.float().contiguous()), _p(c), _I32(m), _I32(n), _I32(k)], _stream())
    return c


def indexer_logits(q, k, weights, ks, ke, k_scale=None):
    t, h, d = q.shape
    s = k.shape[0]
    if q.dtype != torch.float8_e4m3fn or k_scale is None or d != 128:
        raise NotImplementedError(f"indexer_logits: the cuda kernel takes e4m3fn q and k with D = 128, got {q.dtype}, D={d}")
    out = torch.empty((t, s), dtype=torch.float32, device=q.device)
    kernel("indexer_logits_e4m3")(((s + 127) // 128, t, 1), (128, 1, 1),
                                  [_p(q.contiguous()), _p(k.contiguous()), _p(k_scale.float().contiguous()),
                                   _p(weights.float().contiguous()), _p(ks.int().contiguous()), _p(ke.int().contiguous()), _p(out),
                                   _I32(h), _I32(s)], _stream())
    return out


def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
    b, s_q, h, dqk = q.shape
    if dqk != 576 or d_v != 512:
        raise NotImplementedError(f"sparse_mla_decode: the cuda kernel is built for d_qk 576, d_v 512, got {dqk}, {d_v}")
    fp8 = kv_cache.dtype == torch.uint8
    if not fp8 and kv_cache.dtype != torch.bfloat16:
        raise NotImplementedError(f"sparse_mla_decode: the cuda kernel reads 656-byte FP8 or bf16 rows, got {kv_cache.dtype}")
    row_bytes = 656 if fp8 else 576 * 2
    cache = kv_cache
    if cache.stride(-1) != 1 or cache.stride(1) * cache.element_size() != row_bytes:
        cache = cache.contiguous()  # rows must be packed within a page; the page stride itself is free
    out, lse, _ = _sparse(f"sparse_mla_fp8_{fmt}" if fp8 else "sparse_mla_bf16", q, cache, row_bytes, indices, sm_scale, False)
    return out, lse


def _sparse(name, q, cache, row_bytes, indices, sm_scale, want_max):
    b, s_q, h, _ = q.shape
    out = torch.empty((b, s_q, h, 512), dtype=torch.bfloat16, device=q.device)
    lse = torch.empty((b, h, s_q), dtype=torch.float32, device=q.device)
    mx = torch.empty((b, s_q, h), dtype=torch.float32, device=q.device) if want_max else None
    n_rows = cache.shape[0] * cache.shape[1]
    kernel(name)(((h + 7) // 8, s_q, b), (256, 1, 1),
                 [_p(q.contiguous()), _p(cache), _I64(cache.stride(0) * cache.element_size()), _I32(row_bytes),
                  _I32(max(cache.shape[1], 1)), _p(indices.int().contiguous()), _p(out), _p(lse), _p(mx), _I64(n_rows),
                  _I32(h), _I32(s_q), _I32(indices.shape[-1]), _F32(sm_scale)], _stream())
    return out, lse, mx


def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
    t, h, dqk = q.shape
    if dqk != 576 or d_v != 512 or q.dtype != torch.bfloat16 or kv.dtype != torch.bfloat16:
        raise NotImplementedError(f"sparse_mla_prefill: the cuda kernel takes bf16 q/kv, d_qk 576, d_v 512; got {q.dtype}, {dqk}, {d_v}")
    page = kv.reshape(1, kv.shape[0], 1, dqk).contiguous()  # the whole kv as one page of S rows
    out, lse, mx = _sparse("sparse_mla_bf16", q.reshape(t, 1, h, dqk), page, 576 * 2, indices, sm_scale, True)
    return out.reshape(t, h, 512), lse.reshape(t, h), mx.reshape(t, h)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None):
    d = x.shape[-1]
    if d % 8 or d > 8192:
        raise NotImplementedError(f"rms_norm: the cuda kernel needs D % 8 == 0 and D <= 8192, got D={d}")
    xc = x.contiguous()
    rc = residual.contiguous() if residual is not None else None
    y = torch.empty_like(xc)
    r_out = torch.empty_like(xc) if residual is not None else None
    rows = xc.numel() // d if d else 0
    kernel("rms_norm_bf16")((rows, 1, 1), (256, 1, 1), [_p(xc), _p(rc), _p(w.contiguous()), _p(y), _p(r_out), _I32(d), _F32(eps)],
                            _stream())
    return y if residual is None else (y, r_out)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool):
    t, h, d = x.shape
    xc = x.contiguous()
    y = torch.empty_like(xc)
    pairs = t * h * (d // 2)
    kernel("rope_bf16")(((pairs + 255) // 256, 1, 1), (256, 1, 1),
                        [_p(xc), _p(positions.long().contiguous()), _p(freqs.float().contiguous()), _p(y), _I64(t), _I32(h),
                         _I32(d), _I32(int(bool(interleaved)))], _stream())
    return y


def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None, ke: torch.Tensor | None = None):
    t, s = logits.shape
    lc = logits if logits.stride(-1) == 1 else logits.contiguous()
    out = torch.empty((t, k), dtype=torch.int32, device=logits.device)
    kernel("topk_select_f32")((t, 1, 1), (1024, 1, 1),
                              [_p(lc), _I64(lc.stride(0)), _I32(s), _p(None if ks is None else ks.int().contiguous()),
                               _p(None if ke is None else ke.int().contiguous()), _I32(k), _p(out)], _stream())
    return out


def moe_gate(x, weight, bias=None, n_group=8, topk_group=4, topk=8, route_scale=2.5, score_func="sigmoid"):
    t, d = x.shape
    e = weight.shape[0]
    if e > 512 or n_group > 32 or topk > 32:
        raise NotImplementedError(f"moe_gate: the cuda kernel holds E <= 512 scores, n_group <= 32, topk <= 32 (got E={e})")
    xc = x if x.stride(-1) == 1 else x.contiguous()
    w = torch.empty((t, topk), dtype=torch.float32, device=x.device)
    ids = torch.empty((t, topk), dtype=torch.int32, device=x.device)
    kernel("moe_gate_bf16")((t, 1, 1), (256, 1, 1),
                            [_p(xc), _I64(xc.stride(0)), _p(weight.contiguous()), _p(None if bias is None else bias.float().contiguous()),
                             _I32(d), _I32(e), _I32(n_group), _I32(topk_group), _I32(topk), _F32(route_scale),
                             _I32(int(score_func == "softmax")), _p(w), _p(ids)], _stream())
    return w, ids


OPS = {"act_quant": act_quant, "fp8_gemm": fp8_gemm, "indexer_logits": indexer_logits,
       "sparse_mla_decode": sparse_mla_decode, "sparse_mla_prefill": sparse_mla_prefill, "rms_norm": rms_norm, "rope": rope, "topk_select": topk_select,
       "moe_gate": moe_gate}
