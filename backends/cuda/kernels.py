"""Which CUDA kernels exist, in which file, serving which ops: stated once,
read by the ahead-of-time build and the launcher."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: cuda_kernels/ at the package root
SOURCE_DIR = Path(__file__).resolve().parents[2] / "cuda_kernels"
INCLUDE_DIR = SOURCE_DIR / "include"


@dataclass(frozen=True)
class KernelFile:
    source: str                     # file under cuda_kernels/
    kernels: dict[str, tuple[str, ...]]  # extern "C" entry point -> the dsport ops it serves
    matrix: bool = False            # a tensor-core (wgmma) kernel: HGMMA/QGMMA must appear in the SASS
    hot: bool = False               # spills or a missing wgmma are findings
    dynamic_smem: int = 0           # bytes of dynamic shared memory every entry point is launched with

    @property
    def path(self) -> Path:
        return SOURCE_DIR / self.source

    @property
    def stem(self) -> str:
        return self.source.removesuffix(".cu")


#: WG_SMEM_BYTES of include/dsport/mla_tiles.cuh (the host check holds the two equal): q, one key
#: tile, P and the row statistics of the wgmma sparse MLA kernel
SPARSE_WGMMA_SMEM = 157440
#: heads per CTA of the wgmma sparse MLA kernel: the M of its wgmma (h_q must be a multiple)
SPARSE_WGMMA_HEADS = 64

KERNEL_FILES: tuple[KernelFile, ...] = (
    KernelFile("act_quant.cu", {f"act_quant_{f}_{s}": ("act_quant",) for f in ("e4m3fn", "e4m3fnuz") for s in ("ue8m0", "fp32")}),
    KernelFile("fp8_gemm.cu", {"fp8_gemm_nt_e4m3": ("fp8_gemm",)}, matrix=True, hot=True),
    KernelFile("indexer_logits.cu", {"indexer_logits_e4m3": ("indexer_logits",)}, matrix=True, hot=True),
    KernelFile("sparse_mla.cu", {"sparse_mla_fp8_e4m3fn": ("sparse_mla_decode",), "sparse_mla_fp8_e4m3fnuz": ("sparse_mla_decode",),
                                 "sparse_mla_bf16": ("sparse_mla_decode", "sparse_mla_prefill")},
               matrix=True, hot=True),  # CUDA cores: the path for h_q not a multiple of 64; its missing wgmma stays a finding
    # h_q a multiple of 64: heads as the M of bf16 wgmma (launch.py picks it over sparse_mla.cu)
    KernelFile("sparse_mla_wgmma.cu", {"sparse_mla_wgmma_fp8_e4m3fn": ("sparse_mla_decode",),
                                       "sparse_mla_wgmma_fp8_e4m3fnuz": ("sparse_mla_decode",),
                                       "sparse_mla_wgmma_bf16": ("sparse_mla_decode", "sparse_mla_prefill")},
               matrix=True, hot=True, dynamic_smem=SPARSE_WGMMA_SMEM),
    KernelFile("norm_rope.cu", {"rms_norm_bf16": ("rms_norm",), "rope_bf16": ("rope",)}),
    KernelFile("topk_select.cu", {"topk_select_f32": ("topk_select",)}, hot=True),
    KernelFile("moe_gate.cu", {"moe_gate_bf16": ("moe_gate",)}),
)

#: the host-compiled building blocks (g++), checked against the reference in tests
HOST_SOURCE = SOURCE_DIR / "host_check.cpp"
HEADERS: tuple[Path, ...] = tuple(sorted((INCLUDE_DIR / "dsport").glob("*.cuh")))


def own_ops() -> set[str]:
    """Every op some own kernel serves."""
    return {op for f in KERNEL_FILES for ops in f.kernels.values() for op in ops}
