"""The own kernels as dsport ops: argument checks the kernels need beyond the
spec (declared in CAPABILITIES, so a conforming call never fails here), the
grid, and a launch on torch's current stream. Runs only where ``available()``
says so: an sm_90 device, the driver, and torch with CUDA."""
from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from .aot import cache_root, compile_file
from ...core.capabilities import Capability, Limit, declare
from .driver import Kernel
from .kernels import KERNEL_FILES, SPARSE_WGMMA_HEADS

_I64, _I32, _F32 = ctypes.c_longlong, ctypes.c_int, ctypes.c_float
_CUDA = ("cuda",)
#: CUDA's limit on gridDim.y and gridDim.z: calls with more query rows than that are launched in slices
GRID_YZ_MAX = 65535
_BF16 = (torch.bfloat16,)
# the absorbed MLA row every sparse kernel is built for: 512 latent + 64 rope dims, the first 512 the value
_MLA = (Limit("DQK", values=(576,), why="the kernel is built for 512 latent + 64 rope dims"),
        Limit("d_v", values=(512,), why="the kernel writes 512 value dims"))


def kernel(name: str) -> Kernel:
    """Entry point ``name`` loaded into the current device's context (torch's)."""
    return _kernel(name, torch.cuda.current_device())


@lru_cache(maxsize=None)
def _kernel(name: str, device: int) -> Kernel:  # a module is loaded per context, so per device
    kf = next(f for f in KERNEL_FILES if name in f.kernels)
    info = compile_file(kf, "sm_90a", cache_root())
    if "error" in info:
        raise RuntimeError(f"cuda kernel {name}: build failed: {info['error']}")
    return Kernel(Path(info["cubin"]).read_bytes(), name, kf.dynamic_smem)


def launch(name: str, grid: tuple[int, int, int], block: tuple[int, int, int], args: list) -> None:
    """Launch ``name`` on torch's current stream (an empty grid launches nothing: see driver.Kernel)."""
    kernel(name)(grid, block, args, _stream())


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


def _need(op: str, arg: str, t: torch.Tensor | None, *dtypes: torch.dtype) -> None:
    """The kernel reads ``arg`` as one of ``dtypes`` (a raw pointer: anything else would be misread)."""
    if t is not None and t.dtype not in dtypes:
        want = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise NotImplementedError(f"{op}: the cuda kernel reads {arg} as {want}, got {str(t.dtype).removeprefix('torch.')}")


def _p(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


@declare(Capability(dtypes=_BF16, devices=_CUDA, limits=(Limit("block", values=(128,), why="one warp per 128-element group"),),
                    note="block 128 (one warp per group), both FP8 formats, both scale formats"))
def act_quant(x: torch.Tensor, block: int = 128, fmt: str = "e4m3fn", scale_fmt: str = "ue8m0"):
    if block != 128:
        raise NotImplementedError("act_quant: the cuda kernel maps one warp to a 128-element group (block=128 only)")
    _need("act_quant", "x", x, torch.bfloat16)
    fmt, scale_fmt = str(fmt), str(scale_fmt)
    xc = x.contiguous()
    y = torch.empty(x.shape, dtype=torch.float8_e4m3fn if fmt == "e4m3fn" else torch.float8_e4m3fnuz, device=x.device)
    s = torch.empty((*x.shape[:-1], x.shape[-1] // 128), dtype=torch.float32, device=x.device)
    groups = s.numel()
    launch(f"act_quant_{fmt}_{scale_fmt}", ((groups + 7) // 8, 1, 1), (256, 1, 1),
           [_p(xc), _p(y), _p(s), _I64(groups)])
    return y, s


@declare(Capability(fp8_formats=("e4m3fn",), devices=_CUDA, note="e4m3fn: Hopper's tensor cores have no e4m3fnuz"))
def fp8_gemm(a: torch.Tensor, sa: torch.Tensor, b: torch.Tensor, sb: torch.Tensor) -> torch.Tensor:
    _need("fp8_gemm", "a", a, torch.float8_e4m3fn)
    _need("fp8_gemm", "b", b, torch.float8_e4m3fn)
    m, k = a.shape
    n = b.shape[0]
    c = torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    launch("fp8_gemm_nt_e4m3", ((n + 127) // 128, (m + 63) // 64, 1), (128, 1, 1),
           [_p(a.contiguous()), _p(sa.float().contiguous()), _p(b.contiguous()),
            _p(sb.float().contiguous()), _p(c), _I32(m), _I32(n), _I32(k)])
    return c


@declare(Capability(dtypes=(), fp8_formats=("e4m3fn",), devices=_CUDA,
                    limits=(Limit("D", values=(128,), why="one m64n128k32 wgmma row of q is 128 FP8 bytes"),),
                    note="e4m3fn q and k, D = 128"))
def indexer_logits(q, k, weights, ks, ke, k_scale=None):
    t, h, d = q.shape
    s = k.shape[0]
    if q.dtype != torch.float8_e4m3fn or k_scale is None or d != 128:
        raise NotImplementedError(f"indexer_logits: the cuda kernel takes e4m3fn q and k with D = 128, got {q.dtype}, D={d}")
    out = torch.empty((t, s), dtype=torch.float32, device=q.device)
    qc, kc, sc = q.contiguous(), k.contiguous(), k_scale.float().contiguous()
    wc, ksc, kec = weights.float().contiguous(), ks.int().contiguous(), ke.int().contiguous()
    for t0 in range(0, t, GRID_YZ_MAX):  # queries along grid y: slices of at most 65535 rows
        n = min(GRID_YZ_MAX, t - t0)
        launch("indexer_logits_e4m3", ((s + 127) // 128, n, 1), (128, 1, 1),
               [_p(qc) + t0 * h * d, _p(kc), _p(sc), _p(wc) + t0 * h * 4, _p(ksc) + t0 * 4, _p(kec) + t0 * 4,
                _p(out) + t0 * s * 4, _I32(h), _I32(s)])
    return out


@declare(Capability(dtypes=_BF16, devices=_CUDA,
                    arg_dtypes=(("q", _BF16), ("kv_cache", (torch.uint8, torch.bfloat16))),
                    limits=(*_MLA, Limit("SQ", max=GRID_YZ_MAX, why="a sequence's queries run along grid y")),
                    note="bf16 q, d_qk 576, d_v 512; 656-byte FP8 rows (e4m3fn or e4m3fnuz) or bf16 rows; "
                         "wgmma where H % 64 == 0, CUDA cores otherwise"))
def sparse_mla_decode(q, kv_cache, indices, sm_scale, d_v=512, fmt="e4m3fn"):
    b, s_q, h, dqk = q.shape
    if s_q > GRID_YZ_MAX:
        raise NotImplementedError(f"sparse_mla_decode: the cuda kernel runs a sequence's queries along grid y (<= {GRID_YZ_MAX}), got SQ={s_q}")
    if dqk != 576 or d_v != 512:
        raise NotImplementedError(f"sparse_mla_decode: the cuda kernel is built for d_qk 576, d_v 512, got {dqk}, {d_v}")
    _need("sparse_mla_decode", "q", q, torch.bfloat16)
    fp8 = kv_cache.dtype == torch.uint8
    if not fp8 and kv_cache.dtype != torch.bfloat16:
        raise NotImplementedError(f"sparse_mla_decode: the cuda kernel reads 656-byte FP8 or bf16 rows, got {kv_cache.dtype}")
    row_bytes = 656 if fp8 else 576 * 2
    cache = kv_cache
    if cache.stride(-1) != 1 or cache.stride(1) * cache.element_size() != row_bytes:
        cache = cache.contiguous()  # rows must be packed within a page; the page stride itself is free
    out, lse, _ = _sparse(f"fp8_{fmt}" if fp8 else "bf16", q, cache, row_bytes, indices, sm_scale, False)
    return out, lse


_CUDA_CORE_ONLY = [False]


@contextmanager
def cuda_core_only() -> Iterator[None]:
    """Within: sparse MLA runs on the CUDA-core kernel for every head count (the device check
    runs both kernels on the cases where the wgmma one applies)."""
    _CUDA_CORE_ONLY[0] = True
    try:
        yield
    finally:
        _CUDA_CORE_ONLY[0] = False


def sparse_kernel(rows: str, h: int) -> tuple[str, tuple[int, int]]:
    """The sparse MLA entry point for cache rows ``rows`` (fp8_e4m3fn, fp8_e4m3fnuz, bf16) and h
    query heads, with (CTAs along the heads, threads per CTA): the wgmma kernel where h is a
    multiple of its 64-head M, the CUDA-core kernel (8 heads per CTA) otherwise."""
    if h % SPARSE_WGMMA_HEADS == 0 and not _CUDA_CORE_ONLY[0]:
        return f"sparse_mla_wgmma_{rows}", (h // SPARSE_WGMMA_HEADS, 256)
    return f"sparse_mla_{rows}", ((h + 7) // 8, 256)


def aligned16(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous at a 16-byte aligned address: the sparse kernels read q and cache rows in
    16-byte vectors, and a contiguous view can start at any element of its storage."""
    c = t.contiguous()
    return c if c.data_ptr() % 16 == 0 else c.clone()


def _sparse(rows, q, cache, row_bytes, indices, sm_scale, want_max):
    b, s_q, h, _ = q.shape
    q = aligned16(q)
    if cache.data_ptr() % 16 or (cache.stride(0) * cache.element_size()) % 16:
        cache = aligned16(cache)
    out = torch.empty((b, s_q, h, 512), dtype=torch.bfloat16, device=q.device)
    lse = torch.empty((b, h, s_q), dtype=torch.float32, device=q.device)
    mx = torch.empty((b, s_q, h), dtype=torch.float32, device=q.device) if want_max else None
    n_rows = cache.shape[0] * cache.shape[1]
    name, (ctas, threads) = sparse_kernel(rows, h)
    idx = indices.int().contiguous()
    topk = indices.shape[-1]
    for b0 in range(0, b, GRID_YZ_MAX):  # batch rows (prefill: tokens) along grid z: slices of at most 65535
        n = min(GRID_YZ_MAX, b - b0)
        rows_before = b0 * s_q  # (batch, query) rows ahead of this slice in q, indices, out, max_logits; lse is [B, H, SQ]
        launch(name, (ctas, s_q, n), (threads, 1, 1),
               [_p(q) + rows_before * h * 576 * 2, _p(cache), _I64(cache.stride(0) * cache.element_size()), _I32(row_bytes),
                _I32(max(cache.shape[1], 1)), _p(idx) + rows_before * topk * 4, _p(out) + rows_before * h * 512 * 2,
                _p(lse) + b0 * h * s_q * 4, _p(mx) + rows_before * h * 4 if mx is not None else 0, _I64(n_rows),
                _I32(h), _I32(s_q), _I32(topk), _F32(sm_scale)])
    return out, lse, mx


@declare(Capability(dtypes=_BF16, devices=_CUDA, limits=_MLA, arg_dtypes=(("q", _BF16), ("kv", _BF16)),
                    note="bf16 q and kv, d_qk 576, d_v 512; wgmma where H % 64 == 0, CUDA cores otherwise"))
def sparse_mla_prefill(q, kv, indices, sm_scale, d_v=512):
    t, h, dqk = q.shape
    if dqk != 576 or d_v != 512 or q.dtype != torch.bfloat16 or kv.dtype != torch.bfloat16:
        raise NotImplementedError(f"sparse_mla_prefill: the cuda kernel takes bf16 q/kv, d_qk 576, d_v 512; got {q.dtype}, {dqk}, {d_v}")
    page = kv.reshape(1, kv.shape[0], 1, dqk).contiguous()  # the whole kv as one page of S rows
    out, lse, mx = _sparse("bf16", q.reshape(t, 1, h, dqk), page, 576 * 2, indices, sm_scale, True)
    return out.reshape(t, h, 512), lse.reshape(t, h), mx.reshape(t, h)


@declare(Capability(dtypes=_BF16, devices=_CUDA, arg_dtypes=(("x", _BF16), ("w", _BF16), ("residual", _BF16)),
                    limits=(Limit("D", max=8192, multiple=8, why="16-byte vectors, at most 4 per thread of 256"),),
                    note="bf16, D % 8 == 0, D <= 8192"))
def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-6, residual: torch.Tensor | None = None):
    d = x.shape[-1]
    if d % 8 or d > 8192:
        raise NotImplementedError(f"rms_norm: the cuda kernel needs D % 8 == 0 and D <= 8192, got D={d}")
    for arg, t in (("x", x), ("w", w), ("residual", residual)):
        _need("rms_norm", arg, t, torch.bfloat16)
    xc = x.contiguous()
    rc = residual.contiguous() if residual is not None else None
    y = torch.empty_like(xc)
    r_out = torch.empty_like(xc) if residual is not None else None
    rows = xc.numel() // d if d else 0
    launch("rms_norm_bf16", (rows, 1, 1), (256, 1, 1), [_p(xc), _p(rc), _p(w.contiguous()), _p(y), _p(r_out), _I32(d), _F32(eps)])
    return y if residual is None else (y, r_out)


@declare(Capability(dtypes=_BF16, devices=_CUDA, arg_dtypes=(("x", _BF16),), note="bf16 x, fp32 angles"))
def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, interleaved: bool):
    _need("rope", "x", x, torch.bfloat16)
    t, h, d = x.shape
    xc = x.contiguous()
    y = torch.empty_like(xc)
    pairs = t * h * (d // 2)
    launch("rope_bf16", ((pairs + 255) // 256, 1, 1), (256, 1, 1),
           [_p(xc), _p(positions.long().contiguous()), _p(freqs.float().contiguous()), _p(y), _I64(t), _I32(h),
            _I32(d), _I32(int(bool(interleaved)))])
    return y


@declare(Capability(dtypes=(torch.float32,), devices=_CUDA, note="fp32 logits, 4-pass 8-bit radix select"))
def topk_select(logits: torch.Tensor, k: int, ks: torch.Tensor | None = None, ke: torch.Tensor | None = None):
    _need("topk_select", "logits", logits, torch.float32)
    t, s = logits.shape
    lc = logits if logits.stride(-1) == 1 else logits.contiguous()
    out = torch.empty((t, k), dtype=torch.int32, device=logits.device)
    launch("topk_select_f32", (t, 1, 1), (1024, 1, 1),
           [_p(lc), _I64(lc.stride(0)), _I32(s), _p(None if ks is None else ks.int().contiguous()),
            _p(None if ke is None else ke.int().contiguous()), _I32(k), _p(out)])
    return out


@declare(Capability(dtypes=_BF16, devices=_CUDA, arg_dtypes=(("x", _BF16), ("weight", _BF16)),
                    limits=(Limit("E", max=512, why="the scores live in 512 floats of shared memory"),
                            Limit("n_group", max=32, why="kept groups are a 32-bit mask"),
                            Limit("topk", max=32, why="one lane per chosen expert")),
                    note="bf16, E <= 512, n_group <= 32, topk <= 32"))
def moe_gate(x, weight, bias=None, n_group=8, topk_group=4, topk=8, route_scale=2.5, score_func="sigmoid"):
    t, d = x.shape
    e = weight.shape[0]
    if e > 512 or n_group > 32 or topk > 32:
        raise NotImplementedError(f"moe_gate: the cuda kernel holds E <= 512 scores, n_group <= 32, topk <= 32 "
                                  f"(got E={e}, n_group={n_group}, topk={topk})")
    _need("moe_gate", "x", x, torch.bfloat16)
    _need("moe_gate", "weight", weight, torch.bfloat16)
    xc = x if x.stride(-1) == 1 else x.contiguous()
    w = torch.empty((t, topk), dtype=torch.float32, device=x.device)
    ids = torch.empty((t, topk), dtype=torch.int32, device=x.device)
    launch("moe_gate_bf16", (t, 1, 1), (256, 1, 1),
           [_p(xc), _I64(xc.stride(0)), _p(weight.contiguous()), _p(None if bias is None else bias.float().contiguous()),
            _I32(d), _I32(e), _I32(n_group), _I32(topk_group), _I32(topk), _F32(route_scale),
            _I32(int(score_func == "softmax")), _p(w), _p(ids)])
    return w, ids


OPS = {"act_quant": act_quant, "fp8_gemm": fp8_gemm, "indexer_logits": indexer_logits,
       "sparse_mla_decode": sparse_mla_decode, "sparse_mla_prefill": sparse_mla_prefill, "rms_norm": rms_norm, "rope": rope, "topk_select": topk_select,
       "moe_gate": moe_gate}
