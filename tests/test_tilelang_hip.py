"""The tilelang backend's AMD builds: TileLang's HIP source compiled and linked
to gfx code objects with ziglang's clang and the header-only ROCm tree (`make`
installs it with `dsport hip-headers`). Nothing here executes on a GPU."""
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("tilelang")
pytest.importorskip("ziglang")

from dsport.backends import tilelang as tl_backend  # noqa: E402
from dsport.backends.tilelang import aot, hip  # noqa: E402
from dsport.core.build import ToolchainMissing  # noqa: E402

EM_AMDGPU = 224  # ELF e_machine of an AMD GPU code object


@pytest.fixture
def pypi_tree(monkeypatch):
    """The header-only tree (HIP 6.2), even on a machine with a ROCm install."""
    if not hip.DEFAULT_TREE.is_dir():
        pytest.fail(f"no header-only ROCm tree at {hip.DEFAULT_TREE}: run `dsport hip-headers` (make does)")
    monkeypatch.setenv("ROCM_PATH", str(hip.DEFAULT_TREE))
    return hip.find_tree()


def _elf_machine(path: str) -> int:
    head = Path(path).read_bytes()[:20]
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


@pytest.mark.slow
def test_gfx942_code_objects_with_resources(pypi_tree, tmp_path):
    assert pypi_tree.version[:2] == (6, 2)
    recs = {r.kernel: r for r in tl_backend.build("gfx942", tmp_path, kernels=("act_quant", "fp8_gemm", "sparse_mla_prefill"))}
    assert {r.status for r in recs.values()} == {"built"}, {k: r.detail for k, r in recs.items()}
    for r in recs.values():
        assert r.artifact.endswith(".gfx942.hsaco") and _elf_machine(r.artifact) == EM_AMDGPU
        assert r.registers and r.registers > 0 and r.spills == 0
        assert "HIP 6.2" in r.extra["rocm"] and "ziglang" in r.extra["compiler"]
        assert r.extra["fp8"] == "e4m3fnuz"  # MI300 computes in the FNUZ flavour
    for name in ("fp8_gemm_0", "fp8_gemm_1", "sparse_mla_prefill_0"):
        assert recs[name].matrix_found and recs[name].extra["mfma_count"] > 0
    # 64 heads x 576 dims staged in LDS, double-buffered: fits MI350's 160 KiB, not MI300's 64 KiB
    mla = recs["sparse_mla_prefill_0"]
    assert mla.shared_bytes > 65536 and any("cannot launch" in f for f in mla.findings)
    assert not recs["act_quant_0"].findings


@pytest.mark.slow
def test_gfx950_builds_with_dsports_ocp_fp8_overlay_on_rocm_6_2(pypi_tree, tmp_path):
    (rec,) = tl_backend.build("gfx950", tmp_path, kernels=("act_quant",))
    assert rec.status == "built", rec.detail
    assert _elf_machine(rec.artifact) == EM_AMDGPU and rec.extra["fp8"] == "e4m3fn"
    assert "HIP 6.2" in rec.extra["rocm"] and "OCP FP8 overlay" in rec.extra["rocm"]
    # its conversions are the hardware's, which write OCP e4m3fn on gfx950 (the assembly kept beside the object)
    src = Path(rec.extra["source"])
    assert "v_cvt_pk_fp8_f32" in (tmp_path / f"{src.stem}-hip-amdgcn-amd-amdhsa-gfx950.s").read_text()
    # the overlay is what makes it build: without it ROCm 6.2's headers lack the OCP types TileLang uses on gfx950
    inc, _ = aot._tilelang_paths()
    with pytest.raises(subprocess.CalledProcessError) as err:
        hip.compile_hip(hip.assemble(pypi_tree), src, "gfx950", [inc], tmp_path / "k.hsaco")
    assert "__hip_fp8_e4m3" in err.value.stderr


def test_rocm_path_that_is_not_a_rocm_tree_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("ROCM_PATH", str(tmp_path))
    with pytest.raises(ToolchainMissing, match="ROCM_PATH .* not a ROCm tree"):
        hip.toolchain("gfx942")


@pytest.mark.slow
def test_source_the_compiler_rejects_is_a_failed_build(pypi_tree, tmp_path, monkeypatch):
    def broken(kernel, target, cfg):
        return "extern \"C\" __global__ void k(float* x) { x[0] = undeclared_name; }\n", {}

    monkeypatch.setattr(aot, "lower", broken)
    (rec,) = tl_backend.build("gfx942", tmp_path, kernels=("act_quant",))
    assert rec.status == "failed" and "undeclared_name" in rec.detail
    assert rec.findings and rec.findings[0].startswith("build failed")
