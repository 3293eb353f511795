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

from dataclasses import asdict, dataclass, field
from typing import Any


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
    shared_bytes: int | None = None   # static shared memory / LDS
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
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = self.findings
        return d
