"""The npu backend module: availability probed without letting a broken
torch_npu into this process, the sample npu.yaml of the README explained,
and the Ascend run script refusing to report anything without an NPU."""
import dataclasses
import os
import pathlib
import re
import subprocess
import textwrap

import pytest
import torch

from dsport.backends import npu
from dsport.conformance.runner import ConformancePlan, select_items
from dsport.core.backend import import_backend
from dsport.core.cli import main
from dsport.npu_kernels.contract_models import NpuContractError
from refusal_check import declared_and_raised, undeclared_refusals, without

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_torch_npu(tmp_path, monkeypatch, body):
    pkg = tmp_path / "torch_npu"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("TORCH_DEVICE_BACKEND_AUTOLOAD", raising=False)
    return npu.available.__wrapped__()


def test_not_installed_is_the_reason_here():
    ok, why = npu.available()
    assert not ok and why.startswith("torch_npu is not installed")


def test_a_torch_npu_that_cannot_load_cann_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    ok, why = _fake_torch_npu(tmp_path, monkeypatch, 'raise ImportError("libascendcl.so: cannot open shared object file")\n')
    assert not ok and "does not import" in why and "libascendcl.so" in why
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in why
    import sys
    assert "torch_npu" not in sys.modules  # probed in a child process only


def test_a_torch_npu_without_a_device_is_unavailable(tmp_path, monkeypatch):
    ok, why = _fake_torch_npu(tmp_path, monkeypatch, """
        import types, torch
        __version__ = "2.13.0"
        torch.npu = types.SimpleNamespace(is_available=lambda: False, device_count=lambda: 0)
    """)
    assert not ok and why == "torch_npu 2.13.0 imports but sees no NPU"


def test_a_visible_npu_makes_it_available(tmp_path, monkeypatch):
    ok, why = _fake_torch_npu(tmp_path, monkeypatch, """
        import types, torch
        __version__ = "2.13.0"
        torch.npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2,
                                          get_device_name=lambda i: "Ascend910_9392")
    """)
    assert ok and why == "torch_npu 2.13.0 on 2 NPU(s): Ascend910_9392"


def test_readme_npu_yaml_explains_every_op(tmp_path, capsys):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n(# npu\.yaml\n.*?)```", text, re.S)
    assert block, "README has no npu.yaml block"
    cfg = tmp_path / "npu.yaml"
    cfg.write_text(block.group(1))
    assert main(["backends", "--explain", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    rows = {}
    for ln in out.splitlines():  # rich wraps long cells onto continuation lines: join them per op
        cells = ln.split("│")
        if len(cells) > 5:
            key = cells[1].strip() or last
            rows[key] = rows.get(key, "") + " " + " ".join(c.strip() for c in cells[2:])
            last = key
    for op in ("sparse_mla_prefill", "sparse_mla_decode", "rms_norm"):
        assert "npu: would serve it via npu_" in rows[op] and "torch_npu is not installed" in rows[op], rows[op]
    assert "npu: leaves it to the chain: npu_lightning_indexer fuses" in rows["indexer_logits"]
    assert all(op in rows for op in npu.NOT_SERVED)


def test_run_script_refuses_without_an_npu(tmp_path):
    env = {**os.environ, "PYTHON": str(ROOT / ".venv/bin/python"), "DSPORT": str(ROOT / ".venv/bin/dsport")}
    if not pathlib.Path(env["PYTHON"]).exists():
        pytest.skip("no .venv here")
    r = subprocess.run(["bash", str(ROOT / "npu_kernels/run_ascend.sh"), str(tmp_path / "out")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode != 0 and "torch_npu" in r.stderr
    assert not (tmp_path / "out" / "conformance-quick.json").exists()


# ---- every limit declared: refusal() answers before an adapter (or the documented op) refuses -----
# NpuContractError is the contract model of a documented torch_npu rejection: a case that reaches one was
# accepted by refusal() for a call the NPU op would reject, so it counts as an undeclared limit too
_REFUSED = (NotImplementedError, NpuContractError)


def test_every_case_refusal_accepts_runs_on_the_contract_models():
    b = import_backend("dsport.backends.npu")
    ops = dict(b.contract_ops())
    accepted, declined, bad = undeclared_refusals(b, ops, select_items(ConformancePlan(ops=sorted(ops))), _REFUSED)
    assert not bad, bad
    assert accepted >= 30 and declined >= 5, (accepted, declined)


@pytest.mark.parametrize("op, field", [("sparse_mla_prefill", "limits"), ("sparse_mla_prefill", "dtypes"),
                                       ("sparse_mla_decode", "page_sizes")])
def test_a_dropped_declaration_is_caught(op, field):
    b = import_backend("dsport.backends.npu")
    ops = dict(b.contract_ops())
    caps = {**b.capabilities, op: without(b.capabilities[op], field)}
    _, _, bad = undeclared_refusals(dataclasses.replace(b, capabilities=caps), {op: ops[op]},
                                    select_items(ConformancePlan(ops=[op])), _REFUSED)
    assert bad and all(m.startswith(f"{op}/") for m in bad), bad


def _gate(e, n_group):
    return dict(x=torch.randn(1, 8), weight=torch.randn(e, 8), bias=torch.zeros(e), n_group=n_group, topk_group=1, topk=2)


@pytest.mark.parametrize("op, args, refused", [
    # no conformance case reaches these limits: inputs at each side of them
    ("rope", dict(x=torch.randn(1, 1, 894), positions=torch.zeros(1, dtype=torch.int64), freqs=torch.ones(447),
                  interleaved=True), False),
    ("rope", dict(x=torch.randn(1, 1, 896), positions=torch.zeros(1, dtype=torch.int64), freqs=torch.ones(448),
                  interleaved=True), True),
    ("rope", dict(x=torch.randn(1, 1000, 2), positions=torch.zeros(1, dtype=torch.int64), freqs=torch.ones(1),
                  interleaved=False), True),
    ("moe_gate", _gate(64, 8), False),
    ("moe_gate", _gate(16, 8), True),            # 2 experts per group
    ("moe_gate", _gate(48 * 35, 48), True),      # align32(35) * 48 = 3072 > 2048 with E = 1680 <= 2048
    ("moe_gate", _gate(2048, 64), False),        # align32(32) * 64 = 2048
    ("moe_gate", _gate(2080, 65), True),         # E > 2048
])
def test_declared_limits_are_the_adapters_refusals(op, args, refused):
    b = import_backend("dsport.backends.npu")
    declared, raised = declared_and_raised(b, dict(b.contract_ops()), op, args)
    assert bool(declared) == refused and (raised is not None) == refused, (declared, raised)
