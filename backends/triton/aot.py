"""Ahead-of-time builds of every Triton kernel for sm_90a, gfx950 and gfx942,
at DeepSeek-V3.2 shapes, on a machine with no GPU.

Each :class:`AotSpec` describes one launch as the JIT would see it: pointer
element types, example integer arguments (whose divisibility by 16 the JIT
would specialize on, so we pass the same hints) and the compile-time
constants. ``"*fp8"`` is resolved per target to the FP8 element type that
target computes in (core.fp8.format_for_arch): e4m3fn on sm_90a and gfx950,
e4m3fnuz on gfx942.

Resource usage comes from the compiler's own outputs: ``ptxas -v`` on the
generated PTX (registers, spill stores, shared memory) for NVIDIA; the code
object metadata in the AMDGCN assembly (VGPRs, spills, scratch) for AMD;
dynamic shared memory / LDS from the kernel metadata. A matrix instruction is
"found" when it appears in the final assembly (wgmma in PTX and HGMMA in SASS
for sm_90a, v_mfma in AMDGCN).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...core.build import KernelBuild
from ...core.errors import ConfigError
from ...core.fp8 import format_for_arch

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("sm_90a", "gfx950", "gfx942")  # the backend's TARGETS hook re-exports this
MATRIX_INSTR = {"cuda": "wgmma", "hip": "mfma"}
TL_FP8 = {torch.float8_e4m3fn: "fp8e4nv", torch.float8_e4m3fnuz: "fp8e4b8"}


@dataclass(frozen=True)
class AotSpec:
    name: str                          # build name (kernel + variant)
    kernel: Any                        # the @triton.jit function
    ops: tuple[str, ...]
    args: dict[str, Any]               # "*T" pointers, ints / floats as the JIT would receive them
    constexprs: dict[str, Any] = field(default_factory=dict)  # a callable value is called with the target name
    num_warps: int = 4
    num_stages: int = 3
    matrix: bool = False               # uses tl.dot: a matrix instruction is expected
    hot: bool = False
    shape: str = ""


def gpu_target(target: str):
    from triton.backends.compiler import GPUTarget

    if target == "sm_90a":
        return GPUTarget("cuda", 90, 32)  # Triton emits sm_90a (wgmma-capable) for capability 90
    if target in ("gfx950", "gfx942"):
        return GPUTarget("hip", target, 64)
    raise ConfigError(f"target: unknown target '{target}' for the triton backend; valid: {list(TARGETS)}")


def _signature(spec: AotSpec, fp8: str) -> tuple[dict[str, str], dict[tuple[int, ...], list]]:
    names = spec.kernel.arg_names
    sig: dict[str, str] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for i, n in enumerate(names):
        if n in spec.constexprs:
            sig[n] = "constexpr"
            continue
        v = spec.args[n]
        if isinstance(v, str):
            sig[n] = v.replace("fp8", fp8) if v == "*fp8" else v
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(v, bool):
            sig[n] = "i1"
        elif isinstance(v, int):
            sig[n] = "i32" if -2**31 <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[n] = "fp32"
        else:
            raise TypeError(f"{spec.name}: argument {n}: cannot derive a signature from {v!r}")
    return sig, attrs


def _ptxas() -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    return get_ptxas(90).path  # the very ptxas Triton used for the cubin


def _rerun_ptxas(ptx: str, workdir: Path) -> str:
    """ptxas -v on the PTX, as Triton runs it; needed when the cubin came from Triton's cache."""
    p = workdir / "k.ptx"
    p.write_text(ptx)
    return subprocess.run([_ptxas(), "-v", "--regAllocOptLevel=2", "-lineinfo", "--gpu-name=sm_90a", str(p),
                           "-o", str(workdir / "k.o")], capture_output=True, text=True, check=True).stderr


def _nvidia_usage(ptxas_log: str, ptx: str, workdir: Path) -> dict[str, Any]:
    out = ptxas_log if "Used" in ptxas_log else _rerun_ptxas(ptx, workdir)
    regs = re.search(r"Used (\d+) registers", out)
    stores = re.search(r"(\d+) bytes spill stores", out)
    loads = re.search(r"(\d+) bytes spill loads", out)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_stores": int(stores.group(1)) if stores else 0,
            "spill_loads": int(loads.group(1)) if loads else 0,
            "ptxas": out.strip()}


def _sass_has_gmma(cubin: bytes, workdir: Path) -> bool | None:
    tool = Path(_ptxas()).with_name("cuobjdump")
    if not tool.exists():
        return None
    p = workdir / "k.cubin"
    p.write_bytes(cubin)
    sass = subprocess.run([str(tool), "-sass", str(p)], capture_output=True, text=True).stdout
    return "GMMA" in sass


def build_one(spec: AotSpec, target: str, out_dir: Path, backend: str = "triton") -> KernelBuild:
    import triton
    from triton import knobs
    from triton.compiler import ASTSource

    fp8 = TL_FP8[format_for_arch(target).dtype]
    tgt = gpu_target(target)
    rec = KernelBuild(backend=backend, kernel=spec.name, ops=spec.ops, target=target, status="failed",
                      matrix_instr=MATRIX_INSTR[tgt.backend] if spec.matrix else None, hot=spec.hot,
                      extra={"shape": spec.shape, "num_warps": spec.num_warps, "num_stages": spec.num_stages,
                             "fp8": format_for_arch(target).name})
    try:
        sig, attrs = _signature(spec, fp8)
        consts = {n: (v(target) if callable(v) else v) for n, v in spec.constexprs.items()}
        src = ASTSource(fn=spec.kernel, signature=sig, constexprs=consts, attrs=attrs)
        log_buf = io.StringIO()
        with knobs.nvidia.scope(), contextlib.redirect_stdout(log_buf):
            knobs.nvidia.dump_ptxas_log = True  # Triton's own ptxas -v run: registers, spills
            k = triton.compile(src, target=tgt, options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    except Exception as e:  # a failed build is a record, never an abort of the others
        rec.detail = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:400]
        log.debug("build of %s for %s failed", spec.name, target, exc_info=True)
        return rec
    kdir = out_dir / target
    kdir.mkdir(parents=True, exist_ok=True)
    for key, val in k.asm.items():
        if key == "source":
            continue
        (kdir / f"{spec.name}.{key}").write_bytes(val) if isinstance(val, bytes) else (kdir / f"{spec.name}.{key}").write_text(val)
    rec.status = "built"
    rec.shared_bytes = int(k.metadata.shared)
    with tempfile.TemporaryDirectory() as tmp:
        if tgt.backend == "cuda":
            rec.artifact = str(kdir / f"{spec.name}.cubin")
            use = _nvidia_usage(log_buf.getvalue(), k.asm["ptx"], Path(tmp))
            rec.registers, rec.spills = use["registers"], use["spill_stores"]
            rec.extra.update(spill_loads=use["spill_loads"])
            if spec.matrix:
                in_ptx = "wgmma.mma_async" in k.asm["ptx"]
                in_sass = _sass_has_gmma(k.asm["cubin"], Path(tmp))
                rec.matrix_found = in_ptx and in_sass is not False
                rec.extra.update(wgmma_in_ptx=in_ptx, gmma_in_sass=in_sass)
        else:
            rec.artifact = str(kdir / f"{spec.name}.hsaco")
            rec.read_amdgcn(k.asm["amdgcn"])
    return rec


def build(target: str, out_dir: str | os.PathLike, specs: list[AotSpec] | None = None) -> list[KernelBuild]:
    gpu_target(target)  # validate the name first
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .numerics import INTERPRETED

    if INTERPRETED:
        return _build_in_subprocess(target, out)
    from .shapes import deepseek_specs

    return [build_one(s, target, out) for s in (specs if specs is not None else deepseek_specs())]


def _build_in_subprocess(target: str, out: Path) -> list[KernelBuild]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "dsport.backends.triton.aot", target, str(out)],
                         env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"triton AOT build subprocess failed: {res.stderr.strip()[-2000:]}")
    return [KernelBuild(**{k: (tuple(v) if k == "ops" else v) for k, v in d.items() if k != "findings"})
            for d in json.loads(res.stdout)]


if __name__ == "__main__":
    print(json.dumps([r.to_json() for r in build(sys.argv[1], sys.argv[2])]))
