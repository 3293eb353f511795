"""The backend contract: one loader, named errors for modules that break it,
the README page equal to the contract, and ``contract_ops`` reported as
``contract`` (never ``pass``) with a planted adapter bug still ``fail``."""
import pathlib
import re
import types

import pytest

from dsport.backends import reference
from dsport.conformance.runner import ConformancePlan, run_backend, select_items
from dsport.conformance.worker import run_case
from dsport.core.backend import HOOKS, BackendContractError, Option, contract_markdown, from_module, import_backend
from dsport.core.capabilities import Capability
from dsport.core.registry import BackendSource, load

ROOT = pathlib.Path(__file__).resolve().parents[1]
ADAPTER = "conformance_planted.contract_adapter"


def _mod(**attrs):
    m = types.ModuleType("my_pkg.backend")
    m.__dict__.update(attrs)
    return m


def _ok():
    return True, "here"


def test_readme_writing_a_backend_page_is_the_contract():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- contract:.*?-->\n(.*?)\n<!-- /contract -->", text, re.S)
    assert block, "README has no contract block"
    assert block.group(1).strip() == contract_markdown().strip()
    assert all(f"`{h.name}`" in block.group(1) for h in HOOKS)


def test_defaults_fill_every_optional_hook():
    b = from_module(_mod(OPS={"act_quant": reference.OPS["act_quant"]}, available=_ok), "mine")
    assert b.name == "mine" and b.capabilities == {} and b.env == {} and b.quick_tags == frozenset()
    assert b.targets == () and b.build is None and b.contract_ops is None and not b.can_build
    assert b.available() == (True, "here")


@pytest.mark.parametrize("attrs, hook, words", [
    (dict(Ops={}, available=_ok), "OPS", "found 'Ops': a misspelling?"),
    (dict(available=_ok), "OPS", "nothing: not defined"),
    (dict(OPS={}), "available", "nothing: not defined"),
    (dict(OPS=[("act_quant", print)], available=_ok), "OPS", "got list"),
    (dict(OPS={"act_quant": 3}, available=_ok), "OPS", "non-callable entries for ['act_quant']"),
    (dict(OPS={}, available=_ok, CAPABILITIES={"act_quant": {"dtypes": None}}), "CAPABILITIES", "other objects for ['act_quant']"),
    (dict(OPS={}, available=_ok, ENV=["TRITON_INTERPRET=1"]), "ENV", "got list"),
    (dict(OPS={}, available=_ok, build="make"), "build", "got str"),
    (dict(OPS={}, available=_ok, OPTIONS={"opset": 21}, configure=print), "OPTIONS", "other objects for ['opset']"),
    (dict(OPS={}, available=_ok, OPTIONS={"opset": Option("int", 21, "the opset")}), "configure", "nothing: not defined"),
])
def test_a_module_breaking_the_contract_is_a_named_error(attrs, hook, words):
    with pytest.raises(BackendContractError) as e:
        from_module(_mod(**attrs))
    assert f"hook '{hook}'" in str(e.value) and "my_pkg.backend" in str(e.value) and words in str(e.value)


def test_a_raising_available_is_a_reason_not_an_exception():
    def boom():
        raise OSError("driver said no")
    assert from_module(_mod(OPS={}, available=boom)).available() == (False, "available() raised OSError: driver said no")


def test_registry_reports_a_broken_module_with_the_hook(tmp_path, monkeypatch):
    (tmp_path / "half_backend.py").write_text("def available():\n    return True, ''\nOP = {}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    b = load("half", {"half": BackendSource("half", "half_backend", "plugin test")})
    assert not b.ok and b.module is None
    assert "not a backend module" in b.reason and "hook 'OPS'" in b.reason and "found 'OP'" in b.reason


def test_refusal_is_the_one_capability_judgement():
    b = from_module(_mod(OPS={"rms_norm": print}, available=_ok, CAPABILITIES={"rms_norm": Capability(heads=(64,))}))
    assert b.refusal("act_quant", {}) == ("does not implement act_quant",)
    assert b.refusal("rms_norm", {"heads": 32}) == ("head count 32 not in [64]",)
    assert b.refusal("rms_norm", {"heads": 64}) == ()


def test_no_backend_attribute_is_read_outside_the_loader():
    # every consumer goes through dsport.core.backend; a getattr on a backend module elsewhere is a second contract
    offenders = []
    for path in ROOT.glob("**/*.py"):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith((".venv/", "tests/", "build/")) or rel == "core/backend.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"getattr\((mod|module|self\.backend|backend)\b", line):
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, offenders


def _rms_items():
    from dsport.core.spec import specs

    plain = {c.id for c in specs()["rms_norm"].cases() if c.inputs().get("residual") is None}
    return [it for it in select_items(ConformancePlan(ops=["rms_norm"])) if it[1] in plain][:4]


@pytest.mark.parametrize("clean, want", [(True, "contract"), (False, "fail")])
def test_contract_ops_run_where_the_backend_is_unavailable(monkeypatch, clean, want):
    if clean:
        monkeypatch.setenv("DSPORT_PLANTED_CLEAN", "1")
    plan = ConformancePlan(ops=["rms_norm"])
    info, rows = run_backend("contract_adapter", ADAPTER, _rms_items(), plan)
    assert info.available and "contract models" in info.reason and "vendornorm" in info.reason
    got = {r["case"]: r["verdict"] for r in rows}
    nonempty = {c: v for c, v in got.items() if c != "T0"}  # an empty tensor cannot show an output-order slip
    assert len(nonempty) >= 2 and set(nonempty.values()) == {want}, [(r["case"], r["verdict"], r["reason"]) for r in rows]
    assert "pass" not in got.values()


def test_contract_is_never_pass_in_process():
    import os

    os.environ["DSPORT_PLANTED_CLEAN"] = "1"
    try:
        b = import_backend(ADAPTER)
        op, case, _ = _rms_items()[0]
        assert run_case(b, dict(reference.OPS), op, case, contract=True)["verdict"] == "contract"
        # the same adapter without contract models has nothing to call: the vendor is absent
        with pytest.raises(TypeError):
            b.ops["rms_norm"](**__import__("dsport").specs()[op].cases()[0].inputs())
    finally:
        del os.environ["DSPORT_PLANTED_CLEAN"]
