"""``dsport build --backend triton --target T``: every kernel compiles ahead of
time for sm_90a, gfx950 and gfx942 with no GPU here, and the report carries
registers, spills, shared memory and the matrix-instruction check."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsport.core.fp8 import format_for_arch

TARGETS = ("sm_90a", "gfx950", "gfx942")


# Each target compiles 13 kernels: about 30 s of CPU per target on a fresh Triton cache,
# so the tests that build are marked slow.
@pytest.fixture(scope="module", params=TARGETS)
def report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"build-{request.param}")
    js = out / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-W", "ignore", "-m", "dsport", "build", "--backend", "triton",
                          "--target", request.param, "--out", str(out / "art"), "--json", str(js), "--markdown"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return request.param, json.loads(js.read_text()), out / "art", res.stdout


@pytest.mark.slow
def test_every_kernel_built_with_artifact(report):
    target, recs, art, _ = report
    assert recs, "no kernels"
    for r in recs:
        assert r["status"] == "built", r
        assert r["target"] == target
        assert os.path.getsize(r["artifact"]) > 0
        assert r["registers"] and r["registers"] > 0
        assert r["spills"] is not None and r["shared_bytes"] is not None


@pytest.mark.slow
def test_matrix_kernels_use_the_target_matrix_instruction(report):
    target, recs, art, _ = report
    want = "wgmma" if target.startswith("sm_") else "mfma"
    mm = [r for r in recs if r["matrix_instr"]]
    assert mm, "no matrix kernels in the build"
    for r in mm:
        assert r["matrix_instr"] == want
        # the assembly itself is the evidence
        asm = (art / target / f"{r['kernel']}.{'ptx' if want == 'wgmma' else 'amdgcn'}").read_text()
        assert (("wgmma.mma_async" in asm) if want == "wgmma" else ("v_mfma" in asm)) == r["matrix_found"]


@pytest.mark.slow
def test_fp8_format_per_target(report):
    target, recs, art, _ = report
    fmt = format_for_arch(target).name
    assert fmt == {"sm_90a": "e4m3fn", "gfx950": "e4m3fn", "gfx942": "e4m3fnuz"}[target]
    gemm = next(r for r in recs if r["kernel"].startswith("fp8_gemm"))
    assert gemm["extra"]["fp8"] == fmt
    ttir = (art / target / f"{gemm['kernel']}.ttir").read_text()
    assert ("f8E4M3FNUZ" in ttir) == (fmt == "e4m3fnuz") and ("f8E4M3FN" in ttir)


@pytest.mark.slow
def test_report_lists_every_kernel(report):
    target, recs, art, stdout = report
    for r in recs:
        assert f"| {r['kernel']} |" in stdout


def test_findings_are_reported_not_hidden():
    from dsport.core.build import KernelBuild
    from dsport.core.cli.build import markdown

    r = KernelBuild("triton", "k", ("op",), "sm_90a", "built", registers=255, spills=64, matrix_instr="wgmma",
                    matrix_found=False, hot=True)
    assert r.findings == ["spills 64", "no wgmma instruction"]
    assert "spills 64; no wgmma instruction" in markdown([r]) and "wgmma NO" in markdown([r])


def test_unknown_target_is_a_named_error(tmp_path):
    res = subprocess.run([sys.executable, "-W", "ignore", "-m", "dsport", "build", "--backend", "triton", "--target", "sm_80",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "sm_80" in res.stderr and "gfx942" in res.stderr
