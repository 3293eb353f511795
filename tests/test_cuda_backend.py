"""The cuda backend module: the contract hooks, available() naming exactly
what is missing, NOT_SERVED covering every other op, and the sm_90a build
(nvcc + ptxas -v + cuobjdump) with its cache. Nothing here launches a kernel:
there is no GPU; builds are 'built', never 'pass'."""
import ctypes

import pytest
import torch

import dsport.backends.cuda as cuda
from dsport.backends.cuda import aot as cbuild
from dsport.backends.cuda import driver
from dsport.backends.cuda.kernels import KERNEL_FILES, own_ops
from dsport.core.backend import from_module
from dsport.core.registry import BUILTIN_BACKENDS, load
from dsport.core.spec import specs


def test_module_meets_the_contract():
    b = from_module(cuda)
    assert b.name == "cuda" and b.targets == ("sm_90a",) and b.can_build and b.contract_ops is not None
    assert BUILTIN_BACKENDS["cuda"] == "dsport.backends.cuda"
    assert set(b.ops) == own_ops() == {"act_quant", "fp8_gemm", "indexer_logits", "sparse_mla_decode",
                                                 "sparse_mla_prefill", "rms_norm", "rope", "topk_select", "moe_gate"}
    assert set(b.contract_ops()) == {"sparse_mla_prefill", "sparse_mla_decode", "fp8_gemm", "indexer_logits",
                                     "indexer_logits_paged", "moe_grouped_gemm_contiguous", "moe_grouped_gemm_masked",
                                     "moe_grouped_fp8_gemm_contiguous", "moe_grouped_fp8_gemm_masked"}
    assert set(b.not_served) == set(specs()) - set(b.ops) and all(b.not_served.values())
    assert "DeepGEMM serves it when importable" in b.not_served["indexer_logits_paged"]


def test_unavailable_here_with_the_reason(monkeypatch):
    b = load("cuda")
    try:
        driver.libcuda()
    except OSError:
        assert not b.ok and b.reason.startswith("no NVIDIA driver")
    else:
        pytest.skip("an NVIDIA driver is installed here")


class _FakeLib:
    pass


@pytest.mark.parametrize("devices, words", [
    ([], "no CUDA device"),
    ([(8, 9)], "wrong arch: the device(s) are sm_89"),
    ([(10, 0), (8, 0)], "wrong arch: the device(s) are sm_100, sm_80"),
    ([(9, 0)], "has no CUDA: the tensors cannot live on the GPU"),
])
def test_available_names_what_is_missing(monkeypatch, devices, words):
    monkeypatch.setattr(driver, "libcuda", lambda: _FakeLib())
    monkeypatch.setattr(driver, "devices", lambda: devices)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ok, reason = cuda.available()
    assert not ok and words in reason


def test_a_driver_error_is_a_reason(monkeypatch):
    def boom():
        raise driver.DriverError("cuInit failed: CUresult 100 (no CUDA-capable device is detected)")
    monkeypatch.setattr(driver, "libcuda", lambda: _FakeLib())
    monkeypatch.setattr(driver, "devices", boom)
    assert cuda.available() == (False, "the NVIDIA driver is present but unusable: cuInit failed: CUresult 100 "
                                       "(no CUDA-capable device is detected)")


def test_launch_args_are_passed_by_pointer():
    # cuLaunchKernel takes void** to each argument: ints by value in a c_int, pointers in a c_void_p
    holders = [ctypes.c_int(3), ctypes.c_void_p(1234)]
    params = (ctypes.c_void_p * 2)(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    assert ctypes.cast(params[0], ctypes.POINTER(ctypes.c_int)).contents.value == 3
    assert ctypes.cast(params[1], ctypes.POINTER(ctypes.c_void_p)).contents.value == 1234


PTXAS = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k_a' for 'sm_90a'
ptxas info    : Function properties for k_a
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 48 registers, used 1 barriers, 32 bytes smem
ptxas info    : Compiling entry function 'k_b' for 'sm_90a'
ptxas info    : Function properties for k_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 20 registers, used 0 barriers
"""
SASS = """	code for sm_90a
		Function : k_b
        /*0010*/                   MOV R1, c[0x0][0x28] ;
		Function : k_a
        /*1b70*/                   QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR8], RZ, !UPT ;
        /*1c20*/                   QGMMA.64x128x32.F32.E4M3.E4M3 R24, gdesc[UR8], R24 ;
"""


def test_ptxas_and_sass_reports_are_read_per_entry_point():
    use = cbuild.parse_ptxas(PTXAS)
    assert use["k_a"] == {"registers": 48, "spill_stores": 4, "spill_loads": 4, "stack": 8, "smem": 32}
    assert use["k_b"]["registers"] == 20 and use["k_b"]["smem"] == 0
    assert cbuild.parse_sass(SASS) == {"k_b": 0, "k_a": 2}


@pytest.fixture
def nvcc():
    if cbuild.find_tool("nvcc") is None:
        pytest.skip("nvcc is not on this machine")


def test_sm90a_build_finds_qgmma_and_is_cached(nvcc, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPORT_CACHE", str(tmp_path / "cache"))
    files = tuple(f for f in KERNEL_FILES if f.source in ("fp8_gemm.cu", "act_quant.cu"))
    first = cbuild.build("sm_90a", tmp_path / "out", files)
    assert {r.status for r in first} == {"built"} and len(first) == 5
    gemm = next(r for r in first if r.kernel == "fp8_gemm_nt_e4m3")
    if gemm.extra.get("gmma_in_sass") is None:
        pytest.skip("no cuobjdump here: SASS not inspected")
    assert gemm.matrix_found and gemm.extra["gmma_in_sass"] >= 4 and gemm.registers > 0 and gemm.shared_bytes == 2 * (64 + 128) * 128
    assert not gemm.findings  # no spills, wgmma present, within 227 KB
    again = cbuild.build("sm_90a", tmp_path / "out2", files)
    assert all(r.extra["cached"] for r in again) and [r.to_json()["registers"] for r in again] == [r.registers for r in first]


def test_a_kernel_without_wgmma_is_a_finding(nvcc, tmp_path, monkeypatch):
    # planted: a "matrix" kernel whose SASS has no GMMA must be reported, not pass silently
    from dsport.backends.cuda.kernels import KernelFile
    monkeypatch.setenv("DSPORT_CACHE", str(tmp_path / "cache"))
    fake = KernelFile("act_quant.cu", {"act_quant_e4m3fn_ue8m0": ("act_quant",)}, matrix=True, hot=True)
    [rec] = cbuild.build("sm_90a", tmp_path, (fake,))
    if rec.extra.get("gmma_in_sass") is None:
        pytest.skip("no cuobjdump here: SASS not inspected")
    assert rec.matrix_found is False and "no wgmma instruction" in rec.findings


def test_a_compile_error_is_a_failed_record(nvcc, tmp_path, monkeypatch):
    from dsport.backends.cuda.kernels import KernelFile
    monkeypatch.setenv("DSPORT_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "broken.cu"
    src.write_text('extern "C" __global__ void broken() { undeclared_thing(); }\n')
    fake = KernelFile(str(src), {"broken": ("act_quant",)})  # an absolute path: SOURCE_DIR / abs == abs
    [rec] = cbuild.build("sm_90a", tmp_path, (fake,))
    assert rec.status == "failed" and "undeclared_thing" in rec.detail


def test_build_refuses_an_unknown_target(tmp_path):
    from dsport.core.errors import ConfigError
    with pytest.raises(ConfigError, match="not a target of backend 'cuda'"):
        cbuild.build("sm_80", tmp_path)


def test_device_check_refuses_to_report_where_nothing_ran(capsys):
    from dsport.backends.cuda import device_check
    if cuda.available()[0]:
        pytest.skip("a usable sm_90 device is here")
    assert device_check.main([]) == 2  # checked nothing: never exit 0
    assert "cuda backend unavailable" in capsys.readouterr().err
