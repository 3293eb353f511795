"""Ahead-of-time builds of device code for targets that are not present here.

A backend that can build exposes ``TARGETS`` (e.g. ``("sm_90a", "gfx950")``)
and ``build(target, out_dir) -> list[KernelBuild]``. A build is reported as
``built``: compiled, never executed. Findings (spills, a missing matrix
instruction in a hot kernel) are carried in the record, not hidden.

Statuses: ``built`` (a device binary exists), ``failed`` (the compiler
rejected the code), ``source`` (the kernel lowered to device source, but the
toolchain to compile it — a compiler or its headers — is not on this machine:
nothing is known about whether it compiles, so it is neither built nor failed).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any


# Most shared memory / LDS one block may use: H100/H200 opt-in 227 KiB,
# MI350 (gfx950) 160 KiB, MI300 (gfx942) 64 KiB. Beyond it a kernel builds but cannot launch.
SHARED_LIMIT = {"sm_90a": 232448, "gfx950": 163840, "gfx942": 65536}


class ToolchainMissing(Exception):
    """A piece of a build toolchain (compiler, headers, libraries) is not on
    this machine: the kernel is not at fault, so its build is ``source``."""


@dataclass
class KernelBuild:
    backend: str
    kernel: str                       # kernel (function) name
    ops: tuple[str, ...]              # dsport ops it serves
    target: str                       # sm_90a, gfx950, gfx942, ...
    status: str                       # "built", "failed" or "source" (see the module docstring)
    artifact: str | None = None       # path of the cubin / code object / source
    registers: int | None = None      # per thread (VGPRs on AMD)
    spills: int | None = None         # bytes (NVIDIA) or spilled registers (AMD)
    shared_bytes: int | None = None   # shared memory / LDS per block (static + dynamic)
    matrix_instr: str | None = None   # the tensor-core instruction family expected (wgmma, mfma)
    matrix_found: bool | None = None  # whether it appears in the generated code
    hot: bool = False                 # a hot kernel: spills or a missing matrix instr are findings
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def findings(self) -> list[str]:
        out = []
        if self.status == "failed":
            out.append(f"build failed: {self.detail}")
        if self.spills:
            out.append(f"spills {self.spills}")
        if self.matrix_instr and self.matrix_found is False:
            out.append(f"no {self.matrix_instr} instruction")
        limit = SHARED_LIMIT.get(self.target)
        if limit and self.shared_bytes and self.shared_bytes > limit:
            out.append(f"shared memory {self.shared_bytes} B > {limit} B on {self.target}: cannot launch")
        return out

    def read_amdgcn(self, asm: str) -> None:
        """Fill registers, spills, LDS and the mfma check from an AMDGCN kernel's
        assembly (the code-object metadata clang writes into it)."""
        def num(key: str) -> int:
            m = re.search(rf"\.{key}:\s+(\d+)", asm)
            return int(m.group(1)) if m else 0

        self.registers, self.spills = num("vgpr_count"), num("vgpr_spill_count")
        scratch = re.search(r"; ScratchSize: (\d+)", asm)
        mfma = len(re.findall(r"^\s*v_mfma_", asm, re.M))
        self.extra.update(agprs=num("agpr_count"), sgprs=num("sgpr_count"), sgpr_spills=num("sgpr_spill_count"),
                          scratch_bytes=int(scratch.group(1)) if scratch else None,
                          static_lds=num("group_segment_fixed_size"), mfma_count=mfma)
        if self.extra["sgpr_spills"]:
            self.detail = "; ".join(x for x in (self.detail, f"{self.extra['sgpr_spills']} SGPRs spilled to VGPR lanes") if x)
        if self.matrix_instr:
            self.matrix_found = mfma > 0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = self.findings
        return d

