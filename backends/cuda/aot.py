"""Ahead-of-time builds of ``cuda_kernels/*.cu`` for sm_90a with nvcc, on a
machine with no GPU.

Per kernel (entry point) the record holds what the compiler itself reports:
registers, spill stores and static shared memory from ``ptxas -v`` and, for
tensor-core kernels, whether the SASS (``cuobjdump -sass``) holds HGMMA/QGMMA
— the instructions wgmma lowers to on sm_90a. Builds are cached under
``$DSPORT_CACHE/cuda-build/<hash>``, keyed by the sources, headers, flags and
the nvcc version, so a repeated build is a lookup.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .kernels import HEADERS, INCLUDE_DIR, KERNEL_FILES, KernelFile
from ...core.build import KernelBuild, ToolchainMissing
from ...core.errors import ConfigError

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = ("sm_90a",)
# No -use_fast_math: the FP8 scale division and the codecs must be IEEE-rounded
# to stay bit-exact with the reference (and with the host check of the same headers).
NVCC_FLAGS: tuple[str, ...] = ("--cubin", "-O3", "-std=c++17", "-Xptxas", "-v", "-lineinfo")
GMMA = re.compile(r"\b[HQ]GMMA\.")


def find_tool(name: str) -> str | None:
    """A CUDA binary tool: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, then the
    copies the ``nvidia-cuda-cuobjdump`` wheel (the ``cuda`` extra) and the
    triton wheel ship."""
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / name).exists():
            return str(Path(home) / "bin" / name)
    for mod, rel in (("nvidia.cuda_cuobjdump", "bin"), ("triton", "backends/nvidia/bin")):
        try:
            pkg = __import__(mod, fromlist=["__file__"])
        except ImportError:
            continue
        roots = list(getattr(pkg, "__path__", [])) or [str(Path(pkg.__file__).parent)]
        for root in roots:
            cand = Path(root) / rel / name
            if cand.exists():
                return str(cand)
    return None


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([\d.]+), V([\d.]+)", out)
    return m.group(2) if m else out.strip().splitlines()[-1] if out.strip() else "unknown"


def _key(kf: KernelFile, target: str, nvcc_ver: str) -> str:
    h = hashlib.sha256()
    for p in (kf.path, *HEADERS):
        h.update(p.name.encode() + p.read_bytes())
    h.update(" ".join((target, nvcc_ver, *NVCC_FLAGS)).encode())
    return h.hexdigest()[:20]


def parse_ptxas(log_text: str) -> dict[str, dict[str, int]]:
    """Per entry function: registers, spill stores/loads, stack, static smem."""
    out: dict[str, dict[str, int]] = {}
    cur: str | None = None
    for line in log_text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = {"registers": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0}
            continue
        if cur is None:
            continue
        if (m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            out[cur].update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        if (m := re.search(r"Used (\d+) registers", line)):
            out[cur]["registers"] = int(m.group(1))
        if (m := re.search(r"(\d+) bytes smem", line)):
            out[cur]["smem"] = int(m.group(1))
    return out


def parse_sass(sass: str) -> dict[str, int]:
    """Per function: how many HGMMA/QGMMA instructions its SASS holds."""
    counts: dict[str, int] = {}
    cur: str | None = None
    for line in sass.splitlines():
        m = re.match(r"\s*Function : (\w+)", line)
        if m:
            cur = m.group(1)
            counts[cur] = 0
        elif cur is not None and GMMA.search(line):
            counts[cur] += 1
    return counts


def compile_file(kf: KernelFile, target: str, cache_root: Path) -> dict[str, Any]:
    """nvcc one .cu file (cached); returns {cubin, ptxas, gmma, cuobjdump, nvcc, cached}."""
    nvcc = find_tool("nvcc")
    if nvcc is None:
        raise ToolchainMissing("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    ver = nvcc_version(nvcc)
    d = cache_root / _key(kf, target, ver)
    meta = d / "meta.json"
    if meta.exists():
        return {**json.loads(meta.read_text()), "cached": True}
    d.mkdir(parents=True, exist_ok=True)
    cubin = d / f"{kf.stem}.cubin"
    res = subprocess.run([nvcc, *NVCC_FLAGS, f"-arch={target}", f"-I{INCLUDE_DIR.parent}", "-o", str(cubin), str(kf.path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()] or res.stderr.strip().splitlines()[-1:]
        return {"error": "; ".join(errors[:3])[:500], "nvcc": f"{nvcc} ({ver})", "cached": False}
    cuobjdump = find_tool("cuobjdump")
    gmma: dict[str, int] | None = None
    if cuobjdump is not None:
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True, check=True).stdout
        gmma = parse_sass(sass)
    info = {"cubin": str(cubin), "ptxas": parse_ptxas(res.stderr), "gmma": gmma, "cuobjdump": cuobjdump,
            "nvcc": f"{nvcc} ({ver})"}
    meta.write_text(json.dumps(info, indent=1))
    return {**info, "cached": False}


def cache_root() -> Path:
    return Path(os.environ.get("DSPORT_CACHE", Path.home() / ".cache" / "dsport")) / "cuda-build"


def build(target: str, out_dir: str | os.PathLike, files: tuple[KernelFile, ...] = KERNEL_FILES) -> list[KernelBuild]:
    if target not in TARGETS:
        raise ConfigError(f"target: '{target}' is not a target of backend 'cuda'; valid: {list(TARGETS)}")
    out = Path(out_dir) / target
    out.mkdir(parents=True, exist_ok=True)
    records: list[KernelBuild] = []
    for kf in files:
        try:
            info = compile_file(kf, target, cache_root())
        except ToolchainMissing as e:
            records += [KernelBuild("cuda", k, ops, target, "source", artifact=str(kf.path), hot=kf.hot,
                                    matrix_instr="wgmma" if kf.matrix else None, detail=str(e)) for k, ops in kf.kernels.items()]
            continue
        if "error" in info:
            records += [KernelBuild("cuda", k, ops, target, "failed", artifact=str(kf.path), hot=kf.hot,
                                    matrix_instr="wgmma" if kf.matrix else None, detail=info["error"]) for k, ops in kf.kernels.items()]
            continue
        artifact = out / Path(info["cubin"]).name
        shutil.copyfile(info["cubin"], artifact)
        for k, ops in kf.kernels.items():
            use = info["ptxas"].get(k)
            rec = KernelBuild("cuda", k, ops, target, "built" if use is not None else "failed", artifact=str(artifact),
                              hot=kf.hot, matrix_instr="wgmma" if kf.matrix else None,
                              extra={"source": f"cuda_kernels/{kf.source}", "nvcc": info["nvcc"], "cached": info["cached"]})
            if use is None:
                rec.detail = f"entry point {k} not in the ptxas report of {kf.source}"
            else:
                rec.registers, rec.spills, rec.shared_bytes = use["registers"], use["spill_stores"], use["smem"] + kf.dynamic_smem
                if kf.dynamic_smem:
                    rec.extra["dynamic_smem"] = kf.dynamic_smem
                rec.extra.update(spill_loads=use["spill_loads"], stack=use["stack"])
                if use["stack"] and not use["spill_stores"]:
                    rec.detail = f"{use['stack']} B stack frame (local memory)"
            if kf.matrix:
                if info["gmma"] is None:
                    rec.detail = "; ".join(x for x in (rec.detail, "cuobjdump not found: SASS not inspected") if x)
                else:
                    n = info["gmma"].get(k, 0)
                    rec.matrix_found = n > 0
                    rec.extra["gmma_in_sass"] = n
            records.append(rec)
    return records
