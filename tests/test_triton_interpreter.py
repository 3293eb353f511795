"""The Triton backend executed on CPU by Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so the checks run
in one child process (tests/triton_interp_checks.py) and report per check.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
EXPECTED = [
    *[f"act_quant/{c}" for c in ("tiny", "e4m3fn-fp32", "e4m3fn-ue8m0", "e4m3fnuz-fp32", "e4m3fnuz-ue8m0", "T0", "outlier",
                                 "zeros-and-fmax", "zeros-and-fmax-fnuz", "non-contiguous", "3d-heads",
                                 "grid-e4m3fn", "grid-e4m3fnuz", "detects-wrong-format",
                                 "fnuz-negative-zero", "fnuz-negative-zero-fp32", "nonfinite-groups", "nonfinite-groups-fp32",
                                 "strided-views", "fp32-strided-views")],
    *[f"fp8_gemm/{c}" for c in ("tiny", "ragged-n", "fnuz", "M0", "brute-force-fnuz", "strided-views", "transposed-b",
                                "nonfinite-operands", "nonfinite-operands-fnuz")],
    *[f"rms_norm/{c}" for c in ("float32", "residual-float32", "bfloat16", "residual-bfloat16", "T0")],
    *[f"rope/{c}" for c in ("interleaved", "rotate-half", "interleaved-detects-mixed-pairing",
                            "rotate-half-detects-mixed-pairing")],
    *[f"indexer_logits/{c}" for c in ("tiny-float", "tiny-fp8", "fp8-fnuz", "fp8-causal-prefix", "empty-windows", "T0",
                                      "nan", "heads-8")],
    *[f"sparse_mla_prefill/{c}" for c in ("tiny", "fp32-inputs", "T0", "rows-all-invalid", "duplicates", "S-lt-k",
                                          "heads-8", "detects-dropped-rope", "tiny-amd-tiling", "rows-all-invalid-amd-tiling")],
    *[f"sparse_mla_decode/{c}" for c in ("tiny-float", "fp8-page1", "fnuz-page64", "B0", "rows-all-invalid", "mtp-sq2")],
    "moe_grouped_gemm_contiguous/segments", "moe_grouped_gemm_contiguous/mixed-block-rejected",
    "moe_experts/swiglu", "moe_experts/T0",
    *[f"backend/{c}" for c in ("available-says-interpreter", "fp8-per-target", "every-op-served-or-declared",
                               "capabilities-cover-ops")],
]


def run_checks(*names: str, env_extra: dict[str, str] | None = None) -> dict[str, dict]:
    env = {**os.environ, "TRITON_INTERPRET": "1", **(env_extra or {})}
    res = subprocess.run([sys.executable, "-W", "ignore", str(HERE / "triton_interp_checks.py"), *names],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results() -> dict[str, dict]:
    return run_checks()


@pytest.mark.parametrize("name", EXPECTED)
def test_interpreter_check(results, name):
    assert name in results, f"check {name} did not run; crashes: {[k for k in results if k.endswith('/crash')]}"
    assert results[name]["ok"], results[name]["detail"]


def test_no_check_crashed(results):
    crashed = {k: v["detail"] for k, v in results.items() if k.endswith("/crash")}
    assert not crashed, crashed


def test_every_check_is_expected(results):
    assert set(results) <= set(EXPECTED), sorted(set(results) - set(EXPECTED))
