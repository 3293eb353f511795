"""The CUDA backend for H800/H200 (sm_90a): dsport's own kernels in
``cuda_kernels/`` (act_quant, fp8_gemm and indexer_logits on FP8 wgmma,
sparse_mla_decode/prefill (656-byte FP8 or bf16 rows), rms_norm, rope, topk_select,
moe_gate) and adapters that serve sparse MLA from FlashMLA and the FP8 and
grouped GEMMs and the indexer logits from DeepGEMM when those libraries are
importable (they take precedence over an own kernel).

Where it runs: an sm_90 device with the NVIDIA driver and torch built with
CUDA; kernels are compiled with nvcc (cached) and launched through the driver
API on torch's current stream. Where it builds: anywhere nvcc is, with no
device (``build``: rows ``built``). Where neither is possible — this machine —
``contract_ops`` runs the adapters against contract models of FlashMLA and
DeepGEMM (rows ``contract``), and the kernels' scalar building blocks are
checked on the host (``hostlib``).
"""
from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from . import deepgemm, flashmla
from . import kernels as _kernels
from ...core.build import KernelBuild
from ...core.capabilities import Capability, capability_of

log = logging.getLogger(__name__)

NAME = "cuda"
DESCRIPTION = "CUDA C++ kernels for H800/H200 (sm_90a, FP8 wgmma) + FlashMLA/DeepGEMM adapters when importable"
PRECISION = ("fp32 accumulation; FP8 e4m3fn with fp32 or ue8m0 scales (act_quant also writes e4m3fnuz); "
             "FP8 GEMM promotes each 128-wide K block to fp32 (wgmma partials scaled on CUDA cores); bf16 outputs")
TARGETS: tuple[str, ...] = ("sm_90a",)
FALLBACK = "served by the fallback chain (triton, torch) when asked for with fallback: fallback"


def _import(name: str) -> tuple[Any | None, str]:
    try:
        return importlib.import_module(name), ""
    except Exception as e:  # noqa: BLE001 - a vendor library failing to import (CPU torch, no GPU) is a reason
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


_FLASH_MLA, _FLASH_MLA_DIST, _FLASH_MLA_ERR = flashmla.find()  # standalone, sgl-kernel's or vLLM's copy
_DEEP_GEMM, _DEEP_GEMM_ERR = _import("deep_gemm")


def own_ops() -> dict[str, Callable[..., Any]]:
    """The own kernels' op table (what OPS holds where no vendor library takes over)."""
    return _own()


def vendor_ops() -> dict[str, Callable[..., Any]]:
    """The ops the importable vendor libraries serve here (empty on this machine)."""
    return _vendor()


def _own() -> dict[str, Callable[..., Any]]:
    from . import launch  # imports nothing device-side until a kernel is called

    return dict(launch.OPS)


def _vendor() -> dict[str, Callable[..., Any]]:
    ops: dict[str, Callable[..., Any]] = {}
    if _DEEP_GEMM is not None:
        ops.update(deepgemm.vendor_ops(_DEEP_GEMM))
    if _FLASH_MLA is not None:
        ops.update(flashmla.vendor_ops(_FLASH_MLA, _FLASH_MLA_DIST))
    return ops


# a vendor library, when importable, takes precedence over the own kernel (fp8_gemm)
OPS: dict[str, Callable[..., Any]] = {**_own(), **_vendor()}

def _capabilities() -> dict[str, Capability]:
    """Every limit, read off the implementation that has it (``declare`` in
    launch.py, flashmla.py, deepgemm.py): for each op in OPS the one OPS
    holds here (a vendor adapter where its library imports, else the own
    kernel), and for the ops only an adapter serves, the adapter's. The
    contract tables carry their adapters' limits themselves, so a contract row
    is judged by the adapter's limits, not the own kernel's."""
    table = {**contract_ops(), **OPS}
    caps = {op: capability_of(fn) for op, fn in table.items()}
    missing = sorted(op for op, cap in caps.items() if cap is None)
    if missing:  # the contract: every limit declared, never a run-time surprise
        raise TypeError(f"cuda backend: no Capability declared for {missing}")
    return caps  # type: ignore[return-value]


def _not_served() -> dict[str, str]:
    from ...core.spec import specs

    vendor_of = {}
    vendor_of.update({op: ("DeepGEMM", _DEEP_GEMM_ERR) for op in ("indexer_logits_paged",
                                                                  "moe_grouped_gemm_contiguous", "moe_grouped_gemm_masked",
                                                                  "moe_grouped_fp8_gemm_contiguous", "moe_grouped_fp8_gemm_masked")})
    out = {}
    for op in specs():
        if op in OPS:
            continue
        if op in vendor_of:
            lib, err = vendor_of[op]
            out[op] = f"no own CUDA kernel yet; {lib} serves it when importable (here: {err}); otherwise {FALLBACK}"
        else:
            out[op] = f"no CUDA kernel yet; {FALLBACK}"
    return out


NOT_SERVED: dict[str, str] = _not_served()


def available() -> tuple[bool, str]:
    from . import driver
    from .aot import find_tool

    try:
        driver.libcuda()
    except OSError as e:
        return False, f"no NVIDIA driver: libcuda.so.1 is not loadable ({e})"
    try:
        caps = driver.devices()
    except (driver.DriverError, OSError) as e:
        return False, f"the NVIDIA driver is present but unusable: {e}"
    if not caps:
        return False, "no CUDA device: the driver reports 0 devices"
    if (9, 0) not in caps:
        archs = ", ".join(f"sm_{a}{b}" for a, b in caps)
        return False, f"wrong arch: the device(s) are {archs}; the kernels are built for sm_90a (H800/H200) and need wgmma"
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} has no CUDA: the tensors cannot live on the GPU (install a CUDA build of torch)"
    if find_tool("nvcc") is None:
        return False, "nvcc not found: the kernels are compiled (and cached) on first use"
    libs = [f"FlashMLA {flashmla.detect(_FLASH_MLA).release} from {_FLASH_MLA_DIST.source}" if _FLASH_MLA else "no FlashMLA",
            "DeepGEMM" if _DEEP_GEMM else "no DeepGEMM"]
    return True, f"sm_90 device ({torch.cuda.get_device_name()}); own kernels for {sorted(_kernels.own_ops())}; {', '.join(libs)}"


def contract_ops() -> dict[str, Callable[..., Any]]:
    """Every adapter op with its vendor call served by the contract model
    (FlashMLA: the 2026-01 release's conventions; DeepGEMM: SM90)."""
    return {**deepgemm.contract_ops(), **flashmla.contract_ops(flashmla.JAN_2026)}


def build(target: str, out_dir: str | os.PathLike) -> list[KernelBuild]:
    from .aot import build as _build

    return _build(target, out_dir)


CAPABILITIES: dict[str, Capability] = _capabilities()
