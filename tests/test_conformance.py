"""The conformance harness end to end: planted bugs come out fail with the
metric that shows why, the bug-free control passes, a crash and a hang are
recorded while the other cases complete, reports validate and merge."""
import copy
import json
import shlex
import xml.etree.ElementTree as ET

import pytest

from conformance_planted.planted_bugs import EXPECTED
from dsport.backends import reference
from dsport.conformance import report, schema
from dsport.conformance.merge import merge
from dsport.conformance.runner import ConformancePlan, load_build_reports, run, run_backend, select_items
from dsport.core.cli import main

pytest_plugins = ("pytester",)
PLANTED = "conformance_planted.planted_bugs"
CLEAN = "conformance_planted.planted_clean"
UNSTABLE = "conformance_planted.unstable"
# which reference branch each planted bug's family waits for, while its reference is missing
REF_BRANCH = {"rope": "ref-dsa", "topk_select": "ref-dsa", "sparse_mla_prefill": "ref-attn", "sparse_mla_decode": "ref-attn",
              "mla_prefill_dense": "ref-attn", "moe_gate": "ref-moe"}


@pytest.fixture(scope="module")
def planted():
    # the case each bug must turn red, plus the tiny and empty cases: enough for the control to show
    # that the bug alone makes the difference, small enough for a 2-core machine
    cases = [f"{op}/{case}" for op, (case, _) in EXPECTED.items()] + ["*/tiny*", "*/T0"]
    runs, rows = run(ConformancePlan(backend_modules=[PLANTED, CLEAN], ops=sorted(EXPECTED), cases=cases, jobs=2))
    return runs, rows


@pytest.fixture(scope="module")
def unstable():
    plan = ConformancePlan(ops=["act_quant", "dequant"], timeout=4.0)
    info, rows = run_backend("unstable", UNSTABLE, select_items(plan), plan)
    _, built = run_backend("unstable", UNSTABLE, [], plan, build_targets=["sm_90a"])
    return info, rows, built


def _by(rows, backend):
    return {(r["op"], r["case"]): r for r in rows if r["backend"] == backend}


@pytest.mark.parametrize("op", sorted(EXPECTED))
def test_planted_bug_fails_with_the_metric_that_shows_why(planted, op):
    if op not in reference.OPS:
        pytest.skip(f"reference for {op} missing (branch {REF_BRANCH.get(op, '?')} not merged): nothing to judge against")
    case, words = EXPECTED[op]
    buggy, clean = _by(planted[1], "planted_bugs"), _by(planted[1], "planted_clean")
    row = buggy[(op, case)]
    assert row["verdict"] == "fail", row
    assert words in row["reason"], row["reason"]
    assert row["metrics"] and row["tolerance"] and row["seed"] is not None
    # the same module with its bugs switched off passes every case of the op: the bug alone turns it red
    control = [r for (o, _), r in clean.items() if o == op]
    assert control and all(r["verdict"] == "pass" for r in control), [(r["case"], r["reason"]) for r in control if r["verdict"] != "pass"]


def test_bug_free_control_ran_with_its_env(planted):
    runs, _ = planted
    assert runs["planted_clean"].env == {"DSPORT_PLANTED_CLEAN": "1"}


def test_crash_and_hang_are_recorded_and_the_rest_completes(unstable):
    info, rows, _ = unstable
    by = {(r["op"], r["case"]): r for r in rows}
    assert by[("act_quant", "tiny")]["verdict"] == "crash" and "SIGABRT" in by[("act_quant", "tiny")]["reason"]
    assert by[("dequant", "fnuz")]["verdict"] == "timeout"
    rest = [r for k, r in by.items() if k not in (("act_quant", "tiny"), ("dequant", "fnuz"))]
    assert len(by) == len(select_items(ConformancePlan(ops=["act_quant", "dequant"]))) and rest
    assert all(r["verdict"] == "pass" for r in rest), [(r["case"], r["verdict"], r["reason"]) for r in rest]


def test_builds_are_built_or_fail_never_pass(unstable, tmp_path):
    _, _, built = unstable
    assert sorted(r["verdict"] for r in built) == ["built", "fail"]
    assert {r["case"] for r in built} == {"sm_90a:act_quant_kernel", "sm_90a:dequant_kernel"}
    f = tmp_path / "build.json"
    f.write_text(json.dumps([{"backend": "cuda", "kernel": "k", "ops": ["fp8_gemm"], "target": "sm_90a", "status": "built"}]))
    (row,) = load_build_reports([str(f)])
    assert row["verdict"] == "built" and row["backend"] == "cuda" and row["op"] == "fp8_gemm"


def _doc(planted, unstable):
    runs, rows = planted
    info, urows, built = unstable
    return report.build_document(rows + urows + built, {**runs, "unstable": info}, "test", "quick")


def test_json_report_matches_the_documented_schema(planted, unstable, tmp_path):
    doc = _doc(planted, unstable)
    assert schema.errors(doc) == []
    report.write_json(doc, str(tmp_path / "r.json"))
    assert schema.errors(json.loads((tmp_path / "r.json").read_text())) == []
    assert doc["summary"]["ok"] is False and doc["summary"]["counts"]["crash"] == 1
    broken = copy.deepcopy(doc)
    broken["results"][0]["verdict"] = "passed"
    del broken["results"][1]["reproduce"]
    errs = schema.errors(broken)
    assert any("verdict" in e for e in errs) and any("reproduce" in e for e in errs)
    # every key the schema defines is documented in SCHEMA.md
    doc_text = (schema.SCHEMA_PATH.parent / "SCHEMA.md").read_text()
    s = schema.schema()["properties"]
    keys = list(s) + list(s["results"]["items"]["properties"]) + list(s["environments"]["items"]["properties"])
    assert [k for k in keys if f"`{k}`" not in doc_text] == []


def test_merge_of_two_machines(planted, unstable):
    a = _doc(planted, unstable)
    b = copy.deepcopy(a)
    b["environments"][0]["machine"] = "mi350-box:AMD Instinct MI350X"
    for r in b["results"]:
        r["machine"] = "mi350-box:AMD Instinct MI350X"
    m = merge([a, b, a], ["a.json", "b.json", "a-again.json"])
    assert len(m["environments"]) == 2 and len(m["results"]) == 2 * len(a["results"])
    assert m["summary"]["counts"]["fail"] == 2 * a["summary"]["counts"]["fail"]
    cols = report.columns(m)
    assert "planted_bugs@mi350-box:AMD Instinct MI350X" in cols and len(cols) == 2 * len(report.columns(a))


def test_junit_and_markdown(planted, unstable):
    doc = _doc(planted, unstable)
    root = ET.fromstring(report.junit_xml(doc))
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    u = suites["dsport.conformance.unstable"]
    assert (u.get("errors"), u.get("failures")) == ("2", "1")  # crash + timeout; the failed build
    n_fail = sum(r["verdict"] == "fail" for r in doc["results"])
    assert sum(int(s.get("failures")) for s in suites.values()) == n_fail == len(list(root.iter("failure")))
    md = report.markdown(doc)
    assert "| `act_quant` |" in md and "**" in md and "dsport conformance --backend-module conformance_planted.planted_bugs" in md


def test_printed_reproduce_command_reruns_that_case_alone(planted, tmp_path, capsys):
    row = _by(planted[1], "planted_bugs")[("dequant", "fnuz")]
    out = tmp_path / "one.json"
    rc = main(shlex.split(row["reproduce"])[1:] + ["--json", str(out), "--no-progress"])
    doc = json.loads(out.read_text())
    assert rc == 1 and [(r["op"], r["case"], r["verdict"]) for r in doc["results"]] == [("dequant", "fnuz", "fail")]
    assert doc["results"][0]["seed"] == row["seed"]


def test_cli_merge_and_list(planted, unstable, tmp_path, capsys):
    a = tmp_path / "a.json"
    report.write_json(_doc(planted, unstable), str(a))
    assert main(["conformance", "merge", str(a), str(a), "-o", str(tmp_path / "m.json"), "--markdown", str(tmp_path / "m.md")]) == 1
    assert schema.errors(json.loads((tmp_path / "m.json").read_text())) == []
    assert main(["conformance", "--ops", "act_quant", "--list"]) == 0
    listed = capsys.readouterr().out.split()
    assert "act_quant/tiny" in listed and "act_quant/ds-hidden" not in listed  # ds-hidden is full-set only
    assert main(["conformance", "--ops", "no_such_op"]) == 2


def _plugin_args() -> list[str]:
    """'-p' the plugin unless an installed dsport already loads it through its pytest11 entry
    point (registering the same module twice is an error in pytest)."""
    import importlib.metadata
    import os

    autoload = not os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    eps = importlib.metadata.entry_points(group="pytest11")
    installed = any(ep.value == "dsport.conformance.pytest_plugin" for ep in eps)
    return [] if autoload and installed else ["-p", "dsport.conformance.pytest_plugin"]


def test_pytest_plugin_runs_cases_as_test_ids(pytester):
    pytester.makepyfile("def test_own():\n    assert True\n")
    res = pytester.runpytest_inprocess(*_plugin_args(), "--dsport-backend-module", PLANTED,
                                       "--dsport-ops", "act_quant,dequant", "-q", "-p", "no:cacheprovider")
    # act_quant: every ue8m0 case fails (12), the four fp32-scale cases and T0 pass;
    # dequant: the two fnuz cases fail, tiny, T0 and strided-views (e4m3fn) pass
    res.assert_outcomes(passed=1 + 5 + 3, failed=12 + 2)
    res.stdout.fnmatch_lines(["*act_quant?planted_bugs-e4m3fn-ue8m0?*", "*differ bit-wise*"])


def test_pytest_plugin_is_inert_without_its_option(pytester):
    pytester.makepyfile("def test_own():\n    assert True\n")
    res = pytester.runpytest_inprocess(*_plugin_args(), "-q", "-p", "no:cacheprovider")
    res.assert_outcomes(passed=1)


def test_a_backend_that_cannot_load_is_a_crash_and_a_missing_one_a_skip():
    runs, rows = run(ConformancePlan(backend_modules=["conformance_planted.broken", "conformance_planted.not_there"],
                          ops=["dequant"], cases=["tiny"], jobs=2))
    by = {r["backend"]: r for r in rows}
    assert by["broken"]["verdict"] == "crash" and "half-written backend" in by["broken"]["reason"]
    assert by["not_there"]["verdict"] == "skip" and "ModuleNotFoundError" in by["not_there"]["reason"]
    assert by["broken"]["seed"] == by["not_there"]["seed"] is not None


def test_quick_tags_narrow_the_quick_set_with_visible_skips():
    module = "conformance_planted.quick_tagged"
    quick = ConformancePlan(ops=["act_quant"])
    _, rows = run_backend("quick_tagged", module, select_items(quick), quick)
    by_verdict = {r["case"]: r["verdict"] for r in rows}
    assert by_verdict["tiny"] == "pass"
    skipped = [r for r in rows if r["verdict"] == "skip"]
    assert skipped and all("quick set" in r["reason"] and "--full" in r["reason"] for r in skipped)
    assert set(by_verdict) == {it.case for it in select_items(quick)}  # nothing silently dropped
    full = ConformancePlan(ops=["act_quant"], case_set="full")
    _, rows = run_backend("quick_tagged", module, select_items(full), full)
    assert rows and all(r["verdict"] == "pass" for r in rows)


def test_build_rows_map_statuses_honestly():
    from dsport.conformance.row import ResultRow
    from dsport.core.build import KernelBuild

    def row(status: str, **kw):
        return ResultRow.build(KernelBuild("b", "k", ("act_quant",), "gfx950", status, detail="why", **kw).to_json())

    assert row("built")["verdict"] == "built"
    assert row("built", spills=8)["reason"].endswith("findings: spills 8")
    assert row("failed")["verdict"] == "fail"
    src = row("source")  # lowered, no toolchain here: neither built nor failed
    assert src["verdict"] == "skip" and "not compiled here" in src["reason"]
    assert KernelBuild("b", "k", (), "gfx950", "source").findings == []


def test_an_unavailable_backend_still_builds_ahead_of_time():
    # a build needs the toolchain, not the device: the rows are 'built', the cases of an op table it cannot run 'skip'
    runs, rows = run(ConformancePlan(backend_modules=["conformance_planted.offline_builder"], ops=["act_quant"], cases=["tiny"],
                          build_targets=["sm_90a"]))
    got = {(r["case"], r["verdict"]) for r in rows}
    assert ("sm_90a:act_quant_kernel", "built") in got and ("tiny", "skip") in got, got
