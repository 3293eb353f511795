"""The HIP toolchain the TileLang AMD builds compile with, without a ROCm install.

TileLang lowers a tile program for AMD to HIP C++ that includes ROCm's HIP
headers and TileLang's own templates. Turning that into a gfx code object
takes four things, each found here as follows:

* **a clang that knows the gfx target** — the one inside the ``ziglang`` wheel;
* **clang's own HIP headers** (``__clang_hip_runtime_wrapper.h``, the device
  math in ``__clang_hip_math.h``): zig leaves them out of its copy of clang's
  resource directory, so they come from the ``clang-tidy`` wheel of the same
  clang major version, which carries the whole resource directory;
* **ROCm's HIP headers and device libraries** (ocml/ockl bitcode), in a
  *ROCm tree*: ``$ROCM_PATH``, else ``/opt/rocm``, else the header-only tree
  that ``dsport hip-headers`` assembles from the
  ``triton==3.5.1`` wheel on PyPI (the last Triton wheel that ships ROCm's
  full HIP headers: ROCm 6.2) — the Makefile runs it when it installs the
  ``tilelang`` extra;
* **a linker**: zig's ``ld.lld``, under the name clang calls for amdgcn.

ROCm 6.2's ``amd_hip_fp8.h`` has the FNUZ FP8 types only. The OCP ones, which
TileLang's templates use on gfx950 (MI350 computes in e4m3fn), came with ROCm
6.3. With an older tree, gfx950 builds put dsport's own overlay of that header
first on the include path (``hip_kernels/ocp_fp8``: the OCP types and
conversions written on clang's amdgcn builtins, their arithmetic checked
bit-exact against torch on the CPU); a ROCm >= 6.3 tree is used as it is.
(TileLang lets a build force the FNUZ types onto gfx950; its kernels would
then quantize to the wrong FP8 flavour, so dsport does not.)

Every build record says which clang and which ROCm tree made it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...core.build import ToolchainMissing

log = logging.getLogger(__name__)

# The oldest HIP headers each target compiles against, and why.
MIN_HIP: dict[str, tuple[tuple[int, int], str]] = {
    "gfx942": ((6, 2), "TileLang's FNUZ FP8 types (amd_hip_fp8.h)"),
    "gfx950": ((6, 3), "the OCP FP8 types that TileLang's HIP templates, included by every kernel, use on gfx950 "
                        "(__hip_fp8_e4m3, added to amd_hip_fp8.h in ROCm 6.3)"),
}

# dsport's overlay of amd_hip_fp8.h with the OCP types, for trees older than MIN_HIP["gfx950"]
OCP_FP8_OVERLAY = Path(__file__).resolve().parents[2] / "hip_kernels" / "ocp_fp8"
OVERLAID = {"gfx950"}

# Where `install` puts the header-only tree: inside the environment, so a fresh
# venv starts without one and `make` builds it.
DEFAULT_TREE = Path(sys.prefix) / "share" / "dsport" / "rocm"

# The wheel the header-only tree comes from, pinned by hash. Its headers and
# bitcode are the same in every platform tag, so one tag is always fetched.
HEADERS_WHEEL = "triton==3.5.1"
HEADERS_WHEEL_TAG = dict(platform="manylinux_2_28_x86_64", python_version="3.11", abi="cp311")
HEADERS_WHEEL_SHA256 = "61413522a48add32302353fdbaaf92daaaab06f6b5e3229940d21b5207f47579"
_WHEEL_AMD = "triton/backends/amd/"

# TileLang's common.h includes <rocwmma/rocwmma.hpp> and uses nothing from
# rocWMMA itself, only hip_bfloat16, which rocWMMA's headers pull in. rocWMMA
# is a separate ROCm library that no wheel carries, so the header-only tree
# gets this one-line stand-in; a real ROCm install brings its own.
ROCWMMA_STANDIN = (
    "// dsport: stand-in for rocWMMA. TileLang's HIP templates include this header but use\n"
    "// none of rocWMMA; they rely only on hip_bfloat16, which rocWMMA's headers include.\n"
    "#pragma once\n#include <hip/hip_bfloat16.h>\n"
)


@dataclass(frozen=True)
class RocmTree:
    """A directory laid out like a ROCm install: include/hip, device bitcode."""

    root: Path
    version: tuple[int, int, int]
    origin: str  # how it was found: ROCM_PATH, /opt/rocm, or dsport's header-only tree

    @classmethod
    def at(cls, root: Path, origin: str) -> RocmTree:
        header = root / "include" / "hip" / "hip_version.h"
        if not header.is_file():
            raise ToolchainMissing(f"{origin} {root} has no include/hip/hip_version.h: not a ROCm tree")
        text = header.read_text()
        parts = [re.search(rf"#define HIP_VERSION_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
        if not all(parts):
            raise ToolchainMissing(f"{header}: no HIP_VERSION_MAJOR/MINOR/PATCH defines")
        return cls(root, tuple(int(m.group(1)) for m in parts), origin)  # type: ignore[arg-type, union-attr]

    @property
    def version_str(self) -> str:
        return ".".join(map(str, self.version))

    def bitcode(self) -> list[Path]:
        """ocml (device math) and ockl (work-item ids, ...): what TileLang's code calls."""
        for d in (self.root / "amdgcn" / "bitcode", *sorted(self.root.glob("lib/llvm/lib/clang/*/lib/amdgcn/bitcode"))):
            libs = [d / "ocml.bc", d / "ockl.bc"]
            if all(p.is_file() for p in libs):
                return libs
        raise ToolchainMissing(f"ROCm tree {self.root} ({self.origin}) has no amdgcn/bitcode/ocml.bc and ockl.bc")


def find_tree() -> RocmTree:
    """$ROCM_PATH if set (an error if it is not a ROCm tree), else /opt/rocm, else dsport's tree."""
    env = os.environ.get("ROCM_PATH")
    if env:
        return RocmTree.at(Path(env), "ROCM_PATH")
    if Path("/opt/rocm/include/hip/hip_version.h").is_file():
        return RocmTree.at(Path("/opt/rocm"), "/opt/rocm")
    if DEFAULT_TREE.is_dir():
        return RocmTree.at(DEFAULT_TREE, f"dsport's header-only tree from {HEADERS_WHEEL}")
    raise ToolchainMissing("no ROCm tree: set ROCM_PATH, or run `dsport hip-headers` "
                           f"(HIP headers from the {HEADERS_WHEEL} wheel)")


def zig() -> str | None:
    try:
        import ziglang
    except ImportError:
        return None
    cand = Path(ziglang.__file__).parent / "zig"
    return str(cand) if cand.exists() else None


def clang_version(zig_exe: str) -> str:
    out = subprocess.run([zig_exe, "clang", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"clang version (\S+)", out)
    return m.group(1) if m else "?"


def resource_dir(major: str) -> Path:
    """clang's resource directory of this major version, with its HIP headers."""
    try:
        import clang_tidy
    except ImportError:
        raise ToolchainMissing("clang's HIP wrapper headers: install the clang-tidy wheel "
                               f"of clang {major} (the tilelang extra pins it)") from None
    rd = Path(clang_tidy.__file__).parent / "data" / "lib" / "clang" / major
    if not (rd / "include" / "__clang_hip_runtime_wrapper.h").is_file():
        found = sorted(p.name for p in rd.parent.glob("*"))
        raise ToolchainMissing(f"clang's HIP wrapper headers for clang {major}: the clang-tidy wheel has "
                               f"resource directories {found}; install the clang-tidy of clang {major}")
    return rd


def _linker_dir(zig_exe: str, work: Path) -> Path:
    """A directory holding `lld`, which clang runs as `lld -flavor gnu` to link amdgcn: zig's ld.lld."""
    d = work / ".hip-linker"
    d.mkdir(parents=True, exist_ok=True)
    lld = d / "lld"
    lld.write_text(f'#!/bin/sh\n[ "$1" = "-flavor" ] && shift 2\nexec "{zig_exe}" ld.lld "$@"\n')
    lld.chmod(0o755)
    return d


@dataclass(frozen=True)
class Toolchain:
    zig: str
    clang: str          # version
    resource_dir: Path
    tree: RocmTree
    overlay: tuple[Path, ...] = ()  # include directories searched before the tree's (dsport's OCP FP8 header)

    def describe(self) -> dict[str, str]:
        rocm = f"HIP {self.tree.version_str} at {self.tree.root} ({self.tree.origin})"
        if self.overlay:
            rocm += " + dsport's OCP FP8 overlay of amd_hip_fp8.h (hip_kernels/ocp_fp8)"
        return {"compiler": f"clang {self.clang} (ziglang)", "rocm": rocm}


def assemble(tree: RocmTree) -> Toolchain:
    """ziglang's clang, its HIP resource headers and ``tree``, or ToolchainMissing naming the piece absent."""
    zig_exe = zig()
    if zig_exe is None:
        raise ToolchainMissing("no clang that knows gfx targets: install the ziglang wheel (the tilelang extra)")
    version = clang_version(zig_exe)
    return Toolchain(zig_exe, version, resource_dir(version.split(".")[0]), tree)


def toolchain(arch: str) -> Toolchain:
    """The toolchain for ``arch``: the ROCm tree found here must be new enough for it."""
    tree = find_tree()
    need, why = MIN_HIP[arch]
    if tree.version[:2] < need and arch in OVERLAID and (OCP_FP8_OVERLAY / "hip" / "amd_detail" / "amd_hip_fp8.h").is_file():
        return dataclasses.replace(assemble(tree), overlay=(OCP_FP8_OVERLAY,))
    if tree.version[:2] < need:
        raise ToolchainMissing(f"{arch} needs HIP >= {need[0]}.{need[1]} for {why}; the ROCm tree here is HIP "
                               f"{tree.version_str} ({tree.origin}): set ROCM_PATH to a newer ROCm")
    return assemble(tree)


def compile_hip(tc: Toolchain, src: Path, arch: str, include: list[Path], out: Path) -> tuple[Path, str]:
    """HIP source -> linked code object ``out`` for ``arch``, and its AMDGCN assembly.

    Raises CalledProcessError with clang's stderr when the source does not compile.
    """
    cmd = [tc.zig, "clang", "-x", "hip", f"--offload-arch={arch}", "--cuda-device-only", "--no-gpu-bundle-output",
           f"--rocm-path={tc.tree.root}", f"-resource-dir={tc.resource_dir}", "-B", str(_linker_dir(tc.zig, out.parent)),
           # device libraries linked explicitly (as Triton does) rather than clang's per-target oclc set
           "-nogpulib", *[a for bc in tc.tree.bitcode() for a in ("-Xclang", "-mlink-builtin-bitcode", "-Xclang", str(bc))],
           # CDNA runs wave64; clang >= 20 no longer predefines the macro ROCm 6.2's warp functions read
           "-D__AMDGCN_WAVEFRONT_SIZE=64",
           "-O3", "-std=c++17", *[f"-I{p}" for p in (*tc.overlay, *include)],
           "-save-temps=obj",  # keeps the .s beside the code object: registers, spills, LDS, mfma
           "-o", str(out), str(src)]
    subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=out.parent)
    asm = out.parent / f"{src.stem}-hip-amdgcn-amd-amdhsa-{arch}.s"
    return out, asm.read_text()


# -- the header-only tree ---------------------------------------------------------------------
def install(dest: Path = DEFAULT_TREE) -> RocmTree:
    """Assemble a header-only ROCm tree at ``dest`` from the pinned wheel (downloaded, hash-checked)."""
    with tempfile.TemporaryDirectory(prefix="dsport-hip-") as tmp:
        req = Path(tmp) / "req.txt"
        req.write_text(f"{HEADERS_WHEEL} --hash=sha256:{HEADERS_WHEEL_SHA256}\n")
        t = HEADERS_WHEEL_TAG
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "--require-hashes", "--platform", t["platform"], "--python-version",
                        t["python_version"], "--abi", t["abi"], "--implementation", "cp", "-d", tmp, "-r", str(req)],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")  # pip --require-hashes has checked it against the pin
        staging = Path(tmp) / "rocm"
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.endswith("/"):
                    continue
                if name.startswith(_WHEEL_AMD + "include/hip/"):
                    rel = Path("include") / name[len(_WHEEL_AMD + "include/"):]
                elif name in (_WHEEL_AMD + "lib/ocml.bc", _WHEEL_AMD + "lib/ockl.bc"):
                    rel = Path("amdgcn") / "bitcode" / Path(name).name
                else:
                    continue
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                (staging / rel).write_bytes(z.read(name))
        (staging / "include" / "rocwmma").mkdir(parents=True)
        (staging / "include" / "rocwmma" / "rocwmma.hpp").write_text(ROCWMMA_STANDIN)
        tree = RocmTree.at(staging, "staging")
        # clang reads the HIP version of a --rocm-path from this file; without it, it adds no HIP wrapper
        (staging / "share" / "hip").mkdir(parents=True)
        (staging / "share" / "hip" / "version").write_text(
            "".join(f"HIP_VERSION_{k}={v}\n" for k, v in zip(("MAJOR", "MINOR", "PATCH"), tree.version)))
        (staging / "ORIGIN").write_text(f"HIP headers and ocml/ockl bitcode from {wheel.name} (sha256 {HEADERS_WHEEL_SHA256}), "
                                        "plus dsport's rocWMMA stand-in; no ROCm runtime.\n")
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, dest)
    tree = RocmTree.at(dest, "dsport's header-only tree")
    log.info("HIP %s headers installed at %s", tree.version_str, dest)
    return tree

