"""Resolution with plugins: a throw-away backend with two ops, installed
through the dsport.backends entry point and selected by a YAML file; a
broken plugin; strict and fallback; per-op overrides; the capability filter;
`dsport backends` and `--explain`."""
import importlib
import textwrap

import pytest
import torch

import dsport
from dsport.core import registry
from dsport.core.cli import main
from dsport.core.errors import ResolveError
from dsport.core.spec import specs

TWO = ("act_quant", "dequant")

TWOOPS = '''
"""A backend with two ops; act_quant only in e4m3fn."""
from dsport.backends.reference import quant
from dsport.core.capabilities import Capability

NAME = "twoops"
DESCRIPTION = "two ops, for tests"
CALLS = []


def act_quant(x, block=128, fmt="e4m3fn", scale_fmt="ue8m0"):
    CALLS.append("act_quant")
    return quant.act_quant(x, block, fmt, scale_fmt)


def dequant(y, s, block=128):
    CALLS.append("dequant")
    return quant.dequant(y, s, block)


OPS = {"act_quant": act_quant, "dequant": dequant}
CAPABILITIES = {"act_quant": Capability(fp8_formats=("e4m3fn",))}


def available():
    return True, "runs anywhere"
'''

BROKEN = '''
raise ImportError("libnpu_runtime.so: cannot open shared object file")
'''


def install(root, dist: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """What `pip install` leaves behind: the modules plus a dist-info whose
    entry_points.txt importlib.metadata reads."""
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[dsport.backends]\n{eps}\n")


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    install(site, "dsport_twoops", {"dsport_twoops": TWOOPS}, {"twoops": "dsport_twoops"})
    install(site, "dsport_npu_broken", {"dsport_npu_broken": BROKEN}, {"npu_broken": "dsport_npu_broken"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    import sys
    for m in ("dsport_twoops", "dsport_npu_broken"):
        sys.modules.pop(m, None)


def yaml_file(tmp_path, text: str):
    p = tmp_path / "dsport.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_plugins_are_discovered_through_the_entry_point(plugins):
    found = registry.discover()
    assert found["twoops"].module == "dsport_twoops" and found["twoops"].origin == "plugin dsport_twoops"
    assert {"reference", "torch", "triton", "tilelang"} <= set(found)


def test_fallback_serves_the_rest_from_the_chain_and_traces_each(plugins, tmp_path):
    cfg = yaml_file(tmp_path, """
        backend: twoops
        fallback: fallback
        fallback_chain: [reference]
    """)
    t = dsport.resolve(cfg, validate=False)
    import dsport_twoops

    assert t.act_quant is dsport_twoops.act_quant and t.dequant is dsport_twoops.dequant
    from dsport.backends import reference
    for op in ("weight_dequant", "fp8_gemm"):
        assert t.served_by[op] == "reference"
        assert getattr(t, op) is reference.OPS[op]
    others = [op for op in specs() if op not in TWO]
    for op in others:  # every op twoops lacks has its own trace line naming it and why
        line = next((ln for ln in t.trace if ln.startswith(f"{op}:")), None)
        assert line is not None, op
        assert f"twoops: does not implement {op}" in line
    assert not any(ln.startswith(("act_quant:", "dequant:")) for ln in t.trace)
    assert "served by reference (fallback)" in next(ln for ln in t.trace if ln.startswith("fp8_gemm:"))
    # An op nobody in the chain serves is absent, and touching it says why.
    alone = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": ["npu_broken"]})
    assert set(alone.ops) == set(TWO)
    with pytest.raises(ResolveError, match="rms_norm.*twoops: does not implement rms_norm; npu_broken: unavailable: import failed"):
        alone.rms_norm


def test_strict_fails_listing_every_missing_op(plugins, tmp_path):
    cfg = yaml_file(tmp_path, """
        backend: twoops
        fallback: strict
    """)
    with pytest.raises(ResolveError) as e:
        dsport.resolve(cfg)
    msg = str(e.value)
    missing = [op for op in specs() if op not in TWO]
    assert f"cannot serve {len(missing)} op(s)" in msg
    for op in missing:
        assert f"{op}: twoops: does not implement {op}" in msg
    for op in TWO:
        assert f"\n  {op}:" not in msg


def test_calls_go_to_the_bound_backend(plugins):
    import dsport_twoops

    t = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": ["reference"]})
    dsport_twoops.CALLS.clear()
    y, s = t.act_quant(torch.randn(2, 128))
    t.dequant(y, s)
    t.weight_dequant(torch.zeros(128, 128).to(torch.float8_e4m3fn), torch.ones(1, 1))
    assert dsport_twoops.CALLS == ["act_quant", "dequant"]


def test_capability_filter_uses_the_config(plugins):
    """twoops declares act_quant for e4m3fn only: an e4m3fnuz config moves it to the chain."""
    t = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": ["reference"], "fp8": {"format": "e4m3fnuz"}})
    assert t.served_by["act_quant"] == "reference" and t.served_by["dequant"] == "twoops"
    assert "twoops: fp8 format e4m3fnuz not in ['e4m3fn']" in next(ln for ln in t.trace if ln.startswith("act_quant:"))
    ok = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": ["reference"], "fp8": {"format": "e4m3fn"}})
    assert ok.served_by["act_quant"] == "twoops"
    with pytest.raises(ResolveError, match=r"act_quant: twoops: fp8 format e4m3fnuz not in \['e4m3fn'\]"):
        dsport.resolve({"backend": "twoops", "fallback": "strict", "fp8": {"format": "e4m3fnuz"}})


def test_per_op_override(plugins):
    t = dsport.resolve({"backend": "reference", "ops": {"dequant": "twoops"}})
    assert t.served_by["dequant"] == "twoops" and t.served_by["act_quant"] == "reference"
    assert t.plan.ops["dequant"].role == "override"


def test_validate_flag_binds_checked_or_raw(plugins):
    import dsport_twoops

    raw = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": []}, validate=False)
    checked = dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": []})
    assert raw.act_quant is dsport_twoops.act_quant
    assert checked.act_quant.__wrapped__ is dsport_twoops.act_quant
    with pytest.raises(dsport.ValidationError, match="act_quant: argument 'x'"):
        checked.act_quant(torch.randn(2, 100))


def test_broken_plugin_is_reported_and_harms_nothing(plugins, capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if "npu_broken" in ln)
    assert "no" in row and "import failed: ImportError: libnpu_runtime.so: cannot open shared object file" in row
    assert "plugin dsport_npu_broken" in row
    ref_row = next(ln for ln in out.splitlines() if ln.strip("│ ").startswith("reference"))
    assert " yes " in ref_row
    assert "twoops" in out
    # Resolution of other backends is untouched; asking for the broken one says why.
    assert dsport.resolve("reference").served_by["act_quant"] == "reference"
    assert dsport.resolve({"backend": "twoops", "fallback": "fallback", "fallback_chain": []}).served_by["dequant"] == "twoops"
    with pytest.raises(ResolveError, match="act_quant: npu_broken: unavailable: import failed: ImportError: libnpu_runtime"):
        dsport.resolve({"backend": "npu_broken", "fallback": "strict"})


def test_plugin_cannot_take_a_builtin_name(tmp_path, monkeypatch, capsys):
    site = tmp_path / "site2"
    site.mkdir()
    install(site, "dsport_fake_ref", {"dsport_fake_ref": TWOOPS}, {"reference": "dsport_fake_ref"})
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    assert registry.discover()["reference"].module == "dsport.backends.reference"
    assert main(["backends"]) == 0
    assert "ignored same-name dsport_fake_ref (plugin dsport_fake_ref)" in capsys.readouterr().out


def test_explain_prints_each_op_and_why_others_were_rejected(plugins, tmp_path, capsys):
    cfg = yaml_file(tmp_path, """
        backend: twoops
        fallback: fallback
        fallback_chain: [npu_broken, reference]
        fp8: {format: e4m3fnuz}
    """)
    assert main(["backends", "--explain", "--config", str(cfg)]) == 0
    rows = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") >= 4 and ln.split("│")[1].strip()}
    assert "twoops" in rows["dequant"] and "requested" in rows["dequant"]
    assert "reference" in rows["act_quant"] and "fallback" in rows["act_quant"]
    assert "fp8 format e4m3fnuz not in ['e4m3fn']" in rows["act_quant"]
    assert "npu_broken: unavailable: import failed: ImportError" in rows["fp8_gemm"]
    assert "twoops: does not implement fp8_gemm" in rows["fp8_gemm"]
    assert main(["backends", "--explain", "--backend", "twoops", "--fallback", "fallback", "--fallback-chain", "npu_broken"]) == 0
    rows = {ln.split("│")[1].strip(): ln for ln in capsys.readouterr().out.splitlines() if ln.count("│") >= 4 and ln.split("│")[1].strip()}
    assert "none" in rows["rms_norm"] and "unserved" in rows["rms_norm"]


def test_explain_strict_exits_nonzero(plugins, capsys):
    assert main(["backends", "--explain", "--backend", "twoops", "--fallback", "strict"]) == 1
    assert "resolve() would fail" in " ".join(capsys.readouterr().out.split())  # rich wraps long lines


def test_reference_does_not_fall_back_by_default():
    """The oracle never borrows an op from a backend it is meant to judge."""
    cfg = dsport.core.config.Config(backend="reference")
    assert cfg.chain("rms_norm") == ("reference",)
    assert dsport.core.config.Config(backend="triton").chain("rms_norm") == ("triton", "torch", "reference")
    assert dsport.core.config.Config(backend="triton", ops={"rms_norm": "tilelang"}).chain("rms_norm") == \
        ("tilelang", "triton", "torch", "reference")


def test_environment_selects_when_resolve_gets_nothing(plugins, tmp_path, monkeypatch):
    lenient = yaml_file(tmp_path, "fallback: fallback\nfallback_chain: [reference]\n")
    monkeypatch.setenv("DSPORT_CONFIG", str(lenient))
    monkeypatch.setenv("DSPORT_BACKEND", "twoops")
    t = dsport.resolve()  # the file's policy and chain, the environment's backend
    assert (t.served_by["dequant"], t.served_by["fp8_gemm"]) == ("twoops", "reference")
    assert dsport.resolve("reference").served_by["dequant"] == "reference"  # an explicit name is taken as is
    monkeypatch.delenv("DSPORT_CONFIG")
    with pytest.raises(ResolveError, match="strict: backend 'twoops'"):  # strict is the default policy
        dsport.resolve()
    monkeypatch.delenv("DSPORT_BACKEND")
    assert dsport.resolve().served_by["dequant"] == "reference"


def test_capability_reasons_are_sentences_naming_value_and_limit():
    from dsport.core.capabilities import Capability

    cap = Capability(dtypes=(torch.bfloat16,), fp8_formats=("e4m3fn",), scale_formats=("ue8m0",), heads=(64, 128),
                     topk_values=(2048,), page_sizes=(64,), devices=("cuda",), archs=("sm_90a",))
    q = {"dtype": torch.float32, "fp8_format": "e4m3fnuz", "scale_format": "fp32", "heads": 16, "topk": 512,
         "page_size": 1, "device": "cpu", "arch": "gfx942"}
    assert cap.reasons(q) == [
        "dtype float32 not in ['bfloat16']", "fp8 format e4m3fnuz not in ['e4m3fn']", "scale format fp32 not in ['ue8m0']",
        "head count 16 not in [64, 128]", "page size 1 not in [64]", "device cpu not in ['cuda']", "arch gfx942 not in ['sm_90a']",
        "topk 512 not in [2048]"]
    assert cap.reasons({"dtype": torch.bfloat16, "topk": 2048, "heads": 128}) == []
    assert cap.reasons({}) == []  # unstated facts are not held against a backend


def test_dispatch_benchmark_runs(capsys):
    """A smoke run (timings are not asserted: this is a benchmark, not a timed test)."""
    assert main(["bench", "dispatch_call", "--calls", "5", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "table(validate=False)" in out and "torch.ops.dsport" in out and "null dequant" in out
