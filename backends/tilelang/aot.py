"""Ahead-of-time builds of the TileLang kernels for GPUs that are not here.

For each kernel and each of its ``build_configs()``, the tile program is
lowered under the target's TVM context (no GPU needed) and its device source
written out. For ``sm_90a`` the CUDA source is compiled with the machine's
nvcc to a cubin, whose registers / spills / static shared memory are read back
with cuobjdump (dynamic shared memory, which TileLang sizes at lowering, comes
from the lowered function's ``dyn_shared_memory_buf``) and whose SASS is
searched for GMMA (wgmma) instructions. For ``gfx950`` the HIP source is
emitted and handed to a clang that knows gfx950 (the one inside the
``ziglang`` wheel); it is reported ``built`` only if a code object comes out.
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

from dsport.core.build import KernelBuild
from dsport.tilelang_kernels import KERNELS
from dsport.tilelang_kernels.target import PROFILES

log = logging.getLogger(__name__)

TARGETS = ("sm_90a", "gfx950")
# Kernels whose hot loop is a tensor-core GEMM: a missing matrix instruction is a finding.
MATRIX_KERNELS = {"fp8_gemm", "indexer_logits", "sparse_mla_prefill"}
MATRIX_INSTR = {"sm_90a": "wgmma", "gfx950": "mfma"}


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


def _zig() -> str | None:
    try:
        import ziglang

        cand = Path(ziglang.__file__).parent / "zig"
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


def _build_sm90a(name: str, src_path: Path, out_dir: Path) -> tuple[Path | None, str]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None, "nvcc not found on PATH"
    inc, cutlass = _tilelang_paths()
    cubin = out_dir / f"{name}.cubin"
    cmd = [nvcc, "--cubin", "-O3", "-std=c++20", "-arch=sm_90a", "-w", f"-I{inc}", f"-I{cutlass}",
           "-o", str(cubin), str(src_path)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, f"nvcc failed: {_tail(r.stderr)}"
    return cubin, ""


def _build_gfx950(name: str, src_path: Path, out_dir: Path) -> tuple[Path | None, str]:
    zig = _zig()
    if zig is None:
        return None, "no clang that knows gfx950 (install the ziglang package)"
    inc, _ = _tilelang_paths()
    obj = out_dir / f"{name}.gfx950.o"
    cmd = [zig, "clang", "-x", "hip", "--offload-arch=gfx950", "--cuda-device-only", "-nogpulib", "-O3",
           "-std=c++17", f"-I{inc}", "-c", "-o", str(obj), str(src_path)]
    rocm = os.environ.get("ROCM_PATH")
    if rocm:
        cmd.insert(2, f"--rocm-path={rocm}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        hint = " (the HIP headers: set ROCM_PATH to a ROCm >= 6.3 install)" if "HIP runtime" in r.stderr else ""
        return None, f"clang {_clang_version(zig)} from ziglang failed: {_tail(r.stderr)}{hint}"
    return obj, ""


TOOLCHAIN_MISSING = "cannot find HIP runtime"


def _clang_version(zig: str) -> str:
    r = subprocess.run([zig, "clang", "--version"], capture_output=True, text=True)
    m = re.search(r"clang version (\S+)", r.stdout)
    return m.group(1) if m else "?"


def _tail(text: str, n: int = 300) -> str:
    lines = [ln for ln in text.strip().splitlines() if "error" in ln.lower()] or text.strip().splitlines()
    return (lines[0] if lines else "")[:n]


def build(target: str, out_dir: str | os.PathLike, kernels: tuple[str, ...] = KERNELS) -> list[KernelBuild]:
    """Lower every kernel (or those named) for ``target`` and compile it where a compiler is here."""
    if target not in TARGETS:
        from dsport.core.errors import ConfigError

        raise ConfigError(f"target: the tilelang backend builds for {list(TARGETS)}, not '{target}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records: list[KernelBuild] = []
    for kernel in kernels:
        mod = importlib.import_module(f"dsport.tilelang_kernels.{kernel}")
        for i, cfg in enumerate(mod.build_configs()):
            name = f"{kernel}_{i}"
            rec = KernelBuild(backend="tilelang", kernel=name, ops=tuple(mod.OPS), target=target, status="failed",
                              matrix_instr=MATRIX_INSTR[target] if kernel in MATRIX_KERNELS else None,
                              hot=kernel in MATRIX_KERNELS, extra={"config": dict(cfg)})
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
                # what the lowering emitted; for sm_90a the cubin's SASS decides below
                rec.matrix_found = rec.matrix_instr in src
            if target == "sm_90a":
                art, err = _build_sm90a(name, src_path, out)
            else:
                art, err = _build_gfx950(name, src_path, out)
            if art is None:
                rec.artifact = str(src_path)
                rec.detail = f"{'CUDA' if target == 'sm_90a' else 'HIP'} source emitted, not compiled: {err}"
                # a missing toolchain says nothing about the kernel: not a failed build
                rec.status = "source" if TOOLCHAIN_MISSING in err else "failed"
                continue
            rec.status, rec.artifact = "built", str(art)
            if target == "sm_90a":
                res = _cuda_resources(art)
                if res:
                    # LOCAL is per-thread local memory: register spills (no kernel here uses local arrays)
                    rec.registers, rec.spills = res["registers"], res["local"]
                    rec.shared_bytes = res["static_shared"] + attrs.get("dyn_shared", 0)
                    rec.extra.update(res)
                    if rec.matrix_instr:
                        rec.matrix_found = res["gmma"] > 0
    return records


if __name__ == "__main__":  # python -m dsport.backends.tilelang.aot sm_90a OUT
    logging.basicConfig(level=logging.INFO)
    for r in build(sys.argv[1], sys.argv[2]):
        print(r.kernel, r.status, r.registers, r.spills, r.shared_bytes, r.matrix_found, r.detail)
