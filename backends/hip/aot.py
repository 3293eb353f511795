"""Ahead-of-time builds of ``hip_kernels/*.hip`` for gfx950 and gfx942 without a ROCm install.

The kernels include no ROCm header and call no device library: they are
written on clang's amdgcn builtins, so the clang inside the ``ziglang`` wheel
compiles them with ``-nogpuinc -nogpulib`` and zig's ``ld.lld`` links the code
object (the same toolchain pieces as :mod:`dsport.backends.tilelang.hip`, minus
the ROCm tree). The FP8 format of a target is :func:`dsport.core.fp8.format_for_arch`
and reaches the source as ``-DDSP_FMT``; a target's LDS budget reaches it as
``-DDSP_LDS_BYTES`` so a kernel can pick its variant.

Each build is cached under the hash of the sources and the flags, and records,
per kernel, VGPRs (arch + AGPRs), SGPRs, spills, LDS, the compiler's occupancy
estimate and whether MFMA instructions appear, from the code object's assembly
and metadata (:meth:`dsport.core.build.KernelBuild.read_amdgcn`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .host import KERNELS, cache_root
from ...core.build import SHARED_LIMIT, KernelBuild, ToolchainMissing
from ...core.errors import ConfigError
from ...core.fp8 import format_for_arch

log = logging.getLogger(__name__)

TARGETS = ("gfx950", "gfx942")
HEADERS = ("hip_common.h", "fp8.h", "mla_cache.h", "softmax.h", "topk_key.h", "mfma.h", "e8m0.h")
FMT_CODE = {"e4m3fn": 0, "e4m3fnuz": 1}


@dataclass(frozen=True)
class Kernel:
    name: str                 # the extern "C" symbol
    ops: tuple[str, ...]
    mfma: bool = False        # a hot kernel that must use the matrix cores
    lds: int = 0              # LDS it needs; a target with less does not get it (the source guards it too)
    archs: tuple[str, ...] = TARGETS  # the targets whose ISA has its instructions (the source #errors elsewhere)


# One file per op family; every kernel of a file is compiled in one code object.
FILES: dict[str, tuple[Kernel, ...]] = {
    "act_quant.hip": (Kernel("dsp_act_quant_ue8m0", ("act_quant",)), Kernel("dsp_act_quant_fp32", ("act_quant",))),
    "rms_norm.hip": (Kernel("dsp_rms_norm", ("rms_norm",)), Kernel("dsp_rms_norm_residual", ("rms_norm",))),
    "fp8_gemm.hip": (Kernel("dsp_fp8_gemm", ("fp8_gemm",), mfma=True),),
    "fp8_gemm_mx.hip": (Kernel("dsp_fp8_gemm_e8m0", ("fp8_gemm",), mfma=True, archs=("gfx950",)),),
    "topk_select.hip": (Kernel("dsp_topk_select", ("topk_select",)),),
    "moe_gate.hip": (Kernel("dsp_moe_gate", ("moe_gate",)),),
    "indexer_logits.hip": (Kernel("dsp_indexer_logits", ("indexer_logits",), mfma=True),),
    # NK = 64 keys per tile (gfx950) and the NK = 32 variant that fits gfx942's 64 KiB of LDS
    "sparse_mla.hip": (Kernel("dsp_sparse_mla_prefill", ("sparse_mla_prefill",), mfma=True, lds=99456),
                       Kernel("dsp_sparse_mla_prefill_nk32", ("sparse_mla_prefill",), mfma=True),
                       Kernel("dsp_sparse_mla_decode", ("sparse_mla_decode",), mfma=True, lds=99456),
                       Kernel("dsp_sparse_mla_decode_nk32", ("sparse_mla_decode",), mfma=True),
                       Kernel("dsp_mla_cache_pack", ("mla_cache_pack",))),
}


# Why a target does not build a kernel at all (no variant serves there: the op stays with the other kernels).
REFUSED: dict[str, dict[str, str]] = {
    "gfx942": {"dsp_fp8_gemm_e8m0": "v_mfma_scale_f32_16x16x128_f8f6f4 (E8M0-scaled MFMA) is gfx950-only; "
                                    "gfx942 serves fp8_gemm with dsp_fp8_gemm (16x16x32 fp8 MFMA + fp32 promotion)"},
}

# Why a target builds a variant rather than the kernel the other target builds.
VARIANT_NOTES: dict[str, dict[str, str]] = {
    "gfx942": {n: "variant: the 64-key tile needs 99456 B of LDS > 65536 B on gfx942 (clang rejects it); 32-key tile"
               for n in ("dsp_sparse_mla_prefill_nk32", "dsp_sparse_mla_decode_nk32")},
}


def _zig() -> str:
    try:
        import ziglang
    except ImportError:
        raise ToolchainMissing("no clang that knows gfx targets: install the ziglang wheel (the tilelang extra)") from None
    exe = Path(ziglang.__file__).parent / "zig"
    if not exe.exists():
        raise ToolchainMissing(f"the ziglang wheel has no zig executable at {exe}")
    return str(exe)


def _resource_dir(zig: str) -> Path:
    from ..tilelang.hip import clang_version, resource_dir

    return resource_dir(clang_version(zig).split(".")[0])


def flags(target: str) -> list[str]:
    """Everything that decides the code object besides the sources."""
    return ["-x", "hip", f"--offload-arch={target}", "--cuda-device-only", "--no-gpu-bundle-output",
            "-nogpuinc", "-nogpulib", "-O3", "-std=c++17",
            f"-DDSP_FMT={FMT_CODE[format_for_arch(target).name]}", f"-DDSP_LDS_BYTES={SHARED_LIMIT[target]}"]


def _key(src: str, fl: list[str], clang: str) -> str:
    h = hashlib.sha256()
    for n in (src, *HEADERS):
        p = KERNELS / n
        if p.is_file():
            h.update(n.encode() + b"\0" + p.read_bytes())
    h.update("\0".join([*fl, clang]).encode())
    return h.hexdigest()[:16]


def compile_file(src: str, target: str) -> tuple[Path, str, bool]:
    """Code object and assembly of ``hip_kernels/src`` for ``target``; the flag says it came from the cache."""
    zig = _zig()
    from ..tilelang.hip import clang_version

    clang = clang_version(zig)
    fl = flags(target)
    cache = cache_root() / "hip-build" / _key(src, fl, clang)
    stem = Path(src).stem
    obj, asm = cache / f"{stem}.{target}.hsaco", cache / f"{stem}-hip-amdgcn-amd-amdhsa-{target}.s"
    if obj.is_file() and asm.is_file():
        return obj, asm.read_text(), True
    work = cache.with_name(cache.name + f".{os.getpid()}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    linker = work / "lld"
    linker.write_text(f'#!/bin/sh\n[ "$1" = "-flavor" ] && shift 2\nexec "{zig}" ld.lld "$@"\n')
    linker.chmod(0o755)
    cmd = [zig, "clang", *fl, f"-resource-dir={_resource_dir(zig)}", "-B", str(work), f"-I{KERNELS}",
           "-save-temps=obj", "-o", str(work / obj.name), str(KERNELS / src)]
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=work)
    for p in work.glob("*"):
        if p.suffix not in (".s", ".hsaco"):
            p.unlink()
    if cache.exists():
        shutil.rmtree(work)
    else:
        work.rename(cache)
    return obj, asm.read_text(), False


def kernel_asm(asm: str, name: str) -> str:
    """The part of a multi-kernel assembly file about ``name``: its body and its metadata entry."""
    # the body runs to the next function (its ScratchSize / Occupancy comments follow .Lfunc_end)
    body = re.search(rf"^{re.escape(name)}:.*?\n(.*?)(?=-- Begin function|^\s*\.amdgpu_metadata)", asm, re.S | re.M)
    meta_block = re.search(r"\.amdgpu_metadata(.*?)\.end_amdgpu_metadata", asm, re.S)
    entry = ""
    if meta_block:
        for part in re.split(r"\n  - ", meta_block.group(1)):
            if re.search(rf"\.name:\s+{re.escape(name)}\s*\n", part):
                entry = part
    if not body or not entry:
        raise ValueError(f"kernel {name} not found in the assembly")
    return body.group(1) + "\n" + entry


def kernel_args(asm: str, name: str) -> list[tuple[int, int, str]]:
    """(offset, size, value_kind) of each kernel argument of ``name``, from the code object's metadata:
    the launch ABI a host launcher must pack (dsport.backends.hip.launch)."""
    entry = kernel_asm(asm, name).split("\n", 1)[-1]
    args = re.search(r"\.args:\n(.*?)\n    \.\w", entry, re.S)
    out = []
    for item in re.split(r"\n\s+- ", "\n" + args.group(1)) if args else []:
        off, size, kind = (re.search(rf"\.{k}:\s+(\S+)", item) for k in ("offset", "size", "value_kind"))
        if off and size and kind:
            out.append((int(off.group(1)), int(size.group(1)), kind.group(1)))
    return out


def build(target: str, out_dir: str | os.PathLike, files: tuple[str, ...] | None = None) -> list[KernelBuild]:
    if target not in TARGETS:
        raise ConfigError(f"target: the hip backend builds for {list(TARGETS)}, not '{target}'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = format_for_arch(target).name
    records: list[KernelBuild] = []
    for src, all_kernels in FILES.items():
        if files is not None and src not in files:
            continue
        for k in all_kernels:
            if target not in k.archs:
                log.info("%s: %s not built: %s", target, k.name, REFUSED.get(target, {}).get(k.name, "not for this ISA"))
        kernels = tuple(k for k in all_kernels if target in k.archs)
        if not kernels:
            continue
        recs = [KernelBuild(backend="hip", kernel=k.name, ops=k.ops, target=target, status="failed",
                            matrix_instr="mfma" if k.mfma else None, hot=k.mfma,
                            extra={"source": f"hip_kernels/{src}", "fp8": fmt}) for k in kernels
                if k.lds <= SHARED_LIMIT[target]]
        for k in kernels:
            if k.lds > SHARED_LIMIT[target]:
                log.info("%s: %s needs %d B of LDS > %d B: not built, its smaller variant serves", target, k.name,
                         k.lds, SHARED_LIMIT[target])
        if target in VARIANT_NOTES:
            for r in recs:
                r.detail = VARIANT_NOTES[target].get(r.kernel, r.detail)
        records += recs
        try:
            obj, asm, cached = compile_file(src, target)
        except ToolchainMissing as e:
            for r in recs:
                r.status, r.detail = "source", f"HIP source, not compiled: {e}"
            continue
        except subprocess.CalledProcessError as e:
            err = [ln for ln in (e.stderr or "").splitlines() if "error" in ln] or (e.stderr or "").splitlines()[:1]
            for r in recs:
                r.detail = err[0][:300] if err else "clang failed"
            continue
        dest = out / obj.name
        shutil.copyfile(obj, dest)
        (out / f"{Path(src).stem}.{target}.s").write_text(asm)
        for r in recs:
            part = kernel_asm(asm, r.kernel)
            r.read_amdgcn(part)
            r.status, r.artifact = "built", str(dest)
            r.shared_bytes = r.extra["static_lds"]  # no dynamic LDS: every buffer is sized at compile time
            occ = re.search(r"; Occupancy: (\d+)", part)
            cvt = len(re.findall(r"^\s*v_cvt_(?:pk_fp8_f32|f32_fp8)", part, re.M))
            r.extra.update(occupancy=int(occ.group(1)) if occ else None, cached=cached, fp8_cvt=cvt,
                           mfma_kinds=sorted(set(re.findall(r"^\s*(v_mfma_\w+)", part, re.M))))
            # the shared build table has no columns for these: they lead the detail
            facts = [f"SGPRs {r.extra['sgprs']}", f"AGPRs {r.extra['agprs']}",
                     f"occupancy {r.extra['occupancy']}/8 waves per SIMD"]
            if cvt:
                facts.append(f"{cvt} fp8 cvt instrs ({fmt})")
            if r.extra["mfma_kinds"]:
                facts.append("+".join(k.removeprefix("v_mfma_") for k in r.extra["mfma_kinds"]))
            r.detail = "; ".join([", ".join(facts)] + ([r.detail] if r.detail else []))
    return records
