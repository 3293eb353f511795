"""Ahead-of-time builds of the TileLang kernels for GPUs that are not here.

For each kernel and each of its ``build_configs(fp8)`` (the FP8 element
format the target computes in), the tile program is lowered under the
target's TVM context (no GPU needed) and its device source written out.

* ``sm_90a``: the CUDA source is compiled with the machine's nvcc to a cubin,
  whose registers / spills / static shared memory are read back with cuobjdump
  (dynamic shared memory, which TileLang sizes at lowering, comes from the
  lowered function's ``dyn_shared_memory_buf``) and whose SASS is searched for
  GMMA (wgmma) instructions.
* ``gfx942`` / ``gfx950``: the HIP source is compiled and linked to a code
  object with the toolchain of :mod:`.hip` (ziglang's clang, a ROCm tree);
  registers, spills and mfma come from the AMDGCN assembly. When a piece of
  that toolchain is missing (a compiler, headers; gfx950's OCP FP8 types come
  from ROCm >= 6.3 or dsport's overlay, see :mod:`.hip`) the record says
  ``source`` and names the piece.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import hip
from ...core.build import KernelBuild, ToolchainMissing
from ...core.fp8 import format_for_arch
from ...tilelang_kernels import KERNELS
from ...tilelang_kernels.target import BUILD_TARGETS as TARGETS
from ...tilelang_kernels.target import PROFILES

log = logging.getLogger(__name__)

# Kernels whose hot loop is a tensor-core GEMM: a missing matrix instruction is a finding.
MATRIX_KERNELS = {"fp8_gemm", "indexer_logits", "sparse_mla_prefill"}
MATRIX_INSTR = {t: "wgmma" if t.startswith("sm_") else "mfma" for t in TARGETS}


def _tilelang_paths() -> tuple[Path, Path]:
    import tilelang

    root = Path(tilelang.__file__).parent
    return root / "src", root / "3rdparty" / "cutlass" / "include"


def _tool(name: str) -> str | None:
    """A CUDA binary tool: PATH first, then the copy the triton wheel bundles."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import triton

        cand = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        return str(cand) if cand.exists() else None
    except ImportError:
        return None


def lower(kernel: str, target: str, cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(device source, attributes of the lowered kernel function) for one config."""
    import tilelang

    p = PROFILES[target]
    mod = importlib.import_module(f"dsport.tilelang_kernels.{kernel}")
    with p.tvm_target:
        art = tilelang.lower(mod.program(p, **cfg), target=p.tvm_target)
    attrs: dict[str, Any] = {}
    for _, f in art.device_mod.functions.items():
        if f.attrs is not None and "dyn_shared_memory_buf" in f.attrs:
            attrs["dyn_shared"] = int(f.attrs["dyn_shared_memory_buf"])
        if f.attrs is not None and "thread_extent" in f.attrs:
            attrs["threads"] = int(f.attrs["thread_extent"].get("threadIdx.x", 0))
    return art.kernel_source, attrs


def _cuda_resources(cubin: Path) -> dict[str, int]:
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return {}
    out = subprocess.run([cuobjdump, "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
    if not m:
        return {}
    sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "static_shared": int(m.group(3)),
            "local": int(m.group(4)), "gmma": len(re.findall(r"\b[HQIB]GMMA\.", sass))}


def _build_sm90a(name: str, src_path: Path, out_dir: Path, rec: KernelBuild) -> Path:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise ToolchainMissing("nvcc not found on PATH")
    inc, cutlass = _tilelang_paths()
    cubin = out_dir / f"{name}.cubin"
    subprocess.run([nvcc, "--cubin", "-O3", "-std=c++20", "-arch=sm_90a", "-w", f"-I{inc}", f"-I{cutlass}",
                    "-o", str(cubin), str(src_path)], capture_output=True, text=True, check=True)
    res = _cuda_resources(cubin)
    if res:
        # LOCAL is per-thread local memory: register spills (no kernel here uses local arrays)
        rec.registers, rec.spills = res["registers"], res["local"]
        rec.shared_bytes = res["static_shared"] + rec.extra.get("dyn_shared", 0)
        rec.extra.update(res, compiler=f"nvcc ({nvcc})")
        if rec.matrix_instr:
            rec.matrix_found = res["gmma"] > 0
    return cubin


def _build_amd(name: str, src_path: Path, out_dir: Path, rec: KernelBuild) -> Path:
    tc = hip.toolchain(rec.target)
    inc, _ = _tilelang_paths()
    obj, asm = hip.compile_hip(tc, src_path, rec.target, [inc], out_dir / f"{name}.{rec.target}.hsaco")
    rec.read_amdgcn(asm)
    # TileLang stages tiles in dynamic LDS, sized at lowering; the metadata counts only static LDS
    rec.shared_bytes = rec.extra["static_lds"] + rec.extra.get("dyn_shared", 0)
    rec.extra.update(tc.describe())
    return obj


def _tail(text: str, n: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if "error" in ln.lower()] or text.strip().splitlines()
    return (lines[0] if lines else "")[:n]


def build(target: str, out_dir: str | os.PathLike, kernels: tuple[str, ...] = KERNELS) -> list[KernelBuild]:
    """Lower every kernel (or those named) for ``target`` and compile it where a compiler is here."""
    if target not in TARGETS:
        from ...core.errors import ConfigError

        raise ConfigError(f"target: the tilelang backend builds for {list(TARGETS)}, not '{target}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp8 = format_for_arch(target).name
    lang, compile_ = ("CUDA", _build_sm90a) if target == "sm_90a" else ("HIP", _build_amd)
    records: list[KernelBuild] = []
    for kernel in kernels:
        mod = importlib.import_module(f"dsport.tilelang_kernels.{kernel}")
        for i, cfg in enumerate(mod.build_configs(fp8)):
            name = f"{kernel}_{i}"
            rec = KernelBuild(backend="tilelang", kernel=name, ops=tuple(mod.OPS), target=target, status="failed",
                              matrix_instr=MATRIX_INSTR[target] if kernel in MATRIX_KERNELS else None,
                              hot=kernel in MATRIX_KERNELS, extra={"config": dict(cfg), "fp8": fp8})
            records.append(rec)
            try:
                src, attrs = lower(kernel, target, cfg)
            except Exception as e:  # noqa: BLE001 - a lowering failure is a result, recorded
                rec.detail = f"lowering failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:300]}"
                log.warning("%s %s: %s", target, name, rec.detail)
                continue
            src_path = out / f"{name}.{'cu' if target == 'sm_90a' else 'hip'}"
            src_path.write_text(src)
            rec.extra.update(attrs, source=str(src_path))
            if rec.matrix_instr:
                # what the lowering emitted; the compiled code decides below when there is some
                rec.matrix_found = rec.matrix_instr in src
            try:
                rec.artifact = str(compile_(name, src_path, out, rec))
                rec.status = "built"
            except ToolchainMissing as e:
                # a missing toolchain says nothing about the kernel: not a failed build
                rec.status, rec.artifact = "source", str(src_path)
                rec.detail = f"{lang} source emitted, not compiled: {e}"
            except subprocess.CalledProcessError as e:
                rec.artifact = str(src_path)
                rec.detail = f"{lang} source emitted; the compiler rejected it: {_tail(e.stderr or '')}"
    return records


if __name__ == "__main__":  # python -m dsport.backends.tilelang.aot sm_90a OUT
    logging.basicConfig(level=logging.INFO)
    for r in build(sys.argv[1], sys.argv[2]):
        print(r.kernel, r.status, r.registers, r.spills, r.shared_bytes, r.matrix_found, r.detail)
