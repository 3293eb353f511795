"""No silent green: every way a command can check nothing for what the user
asked for ends in a non-zero exit and a message saying what and why; the
same for the pytest plugin, `merge` and the YAML config."""
import json

import pytest

from dsport.conformance import report
from dsport.conformance.merge import ReportError, conflicts, load, merge
from dsport.conformance.row import ResultRow
from dsport.core.cli import main
from dsport.core.config import from_mapping, load_config
from dsport.core.errors import ConfigError
from dsport.core.spec import specs

# the op registry is filled before any in-process pytester run: pytester drops modules first imported
# inside a run, and re-importing an op module into the kept registry would register its spec twice
specs()
pytest_plugins = ("pytester",)
P = "conformance_planted."


def cli(capsys, *argv):
    rc = main(["conformance", *argv, "--no-progress"])
    out = capsys.readouterr()
    return rc, " ".join((out.out + out.err).split())


# -- dsport conformance ------------------------------------------------------------
@pytest.mark.parametrize("module, rc, fragments", [
    ("not_there", 2, ["no module of that name"]),
    ("planted_bugz", 2, ["did you mean 'conformance_planted.planted_bugs'?"]),
    ("misspelled_ops", 2, ["hook 'OPS'", "nothing: not defined (found 'OPs': a misspelling?)"]),
    # the traceback's last line and where it was raised
    ("import_error", 1, ["broken", "ImportError: cannot import name 'no_such_kernel'", "import_error.py:2"]),
    ("available_raises", 1, ["broken", "available() raised RuntimeError: probe of the device driver failed"]),
    ("unavailable", 2, ["named explicitly but is unavailable here", "no Frobnicator device", "--allow-skip"]),
    ("stray_ops", 2, ["'dequantt' (did you mean 'dequant'?)"]),
])
def test_a_backend_module_that_checks_nothing_is_loud(capsys, module, rc, fragments):
    got, text = cli(capsys, "--backend-module", P + module, "--ops", "dequant", "--cases", "tiny")
    assert got == rc, text
    for f in fragments:
        assert f in text, (f, text)


def test_allow_skip_accepts_an_unavailable_named_backend(capsys):
    rc, text = cli(capsys, "--backend-module", P + "unavailable", "--ops", "dequant", "--cases", "tiny", "--allow-skip")
    assert rc == 0 and "1 skip" in text
    # a broken backend is not 'unavailable': --allow-skip does not hide it
    assert cli(capsys, "--backend-module", P + "available_raises", "--ops", "dequant", "--cases", "tiny", "--allow-skip")[0] == 1


def test_unknown_case_tag_names_the_valid_ones_and_a_close_match(capsys):
    rc, text = cli(capsys, "--backends", "torch", "--ops", "dequant", "--cases", "tiyn")
    assert rc == 2 and "'tiyn' (did you mean 'tiny'?) matches no case" in text and "['T0', 'fnuz', 'strided-views', 'tiny', 'transposed']" in text


def test_unknown_backend_name_is_a_usage_error(capsys):
    rc, text = cli(capsys, "--backends", "torhc", "--ops", "dequant")
    assert rc == 2 and "did you mean 'torch'?" in text


def test_a_named_backend_whose_every_case_is_unsupported_checked_nothing(capsys):
    # quick_tagged serves act_quant and dequant only: asking it for rms_norm checks nothing
    rc, text = cli(capsys, "--backend-module", P + "quick_tagged", "--ops", "rms_norm", "--cases", "tiny")
    assert rc == 2 and "none of its 1 selected case(s) ran" in text and "unsupported" in text


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["conformance", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0" in text and "1 a case failed" in text and "2 usage or input error" in text


# -- merge ------------------------------------------------------------------------
def _report(tmp_path, name, verdict, created, machine="box-a"):
    row = ResultRow(backend="torch", op="dequant", case="tiny", seed=1, metric="exact", verdict=verdict, seconds=0.0,
                    reproduce="x", machine=machine)
    doc = report.build_document([row], {}, "dsport conformance", "quick")
    doc["created"] = created
    doc["environments"][0]["machine"] = machine
    p = tmp_path / name
    report.write_json(doc, str(p))
    return p


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty file"),
    (b'{"schema": "dsport-conformance", "schema_version": 1, "created', "not valid JSON at line 1"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a text file"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"schema": "other"}', "not a dsport conformance report"),
    (b'{"schema": "dsport-conformance", "schema_version": 1}', "does not match the report schema"),
])
def test_unreadable_reports_are_named_errors_with_exit_2(tmp_path, capsys, content, fragment):
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    with pytest.raises(ReportError, match="bad.json"):
        load(bad)
    good = _report(tmp_path, "good.json", "pass", "2026-01-01T00:00:00+00:00")
    rc = main(["conformance", "merge", str(good), str(bad)])
    text = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "bad.json" in text and fragment in text, text


def test_truncated_report_says_so(tmp_path):
    good = _report(tmp_path, "good.json", "pass", "2026-01-01T00:00:00+00:00")
    cut = tmp_path / "cut.json"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ReportError, match="truncated"):
        load(cut)


def test_duplicate_key_keeps_the_newer_report_whatever_the_argument_order(tmp_path, capsys):
    new_fail = _report(tmp_path, "new_fail.json", "fail", "2026-03-02T00:00:00+00:00")
    old_pass = _report(tmp_path, "old_pass.json", "pass", "2026-03-01T00:00:00+00:00")
    for order in ((new_fail, old_pass), (old_pass, new_fail)):
        doc = merge([load(p) for p in order], [str(p) for p in order])
        assert [r["verdict"] for r in doc["results"]] == ["fail"]
        assert len(doc["superseded"]) == 1 and "kept fail from" in doc["superseded"][0] and "superseded pass" in doc["superseded"][0]
    rc = main(["conformance", "merge", str(new_fail), str(old_pass)])
    text = " ".join(capsys.readouterr().err.split())
    assert rc == 1 and "superseded" in text and "old_pass.json" in text


def test_conflicting_verdicts_across_machines_are_both_kept(tmp_path, capsys):
    a = _report(tmp_path, "a.json", "pass", "2026-03-01T00:00:00+00:00", machine="h200-box")
    b = _report(tmp_path, "b.json", "fail", "2026-03-01T00:00:00+00:00", machine="mi350-box")
    doc = merge([load(a), load(b)], [str(a), str(b)])
    assert sorted((r["machine"], r["verdict"]) for r in doc["results"]) == [("h200-box", "pass"), ("mi350-box", "fail")]
    assert conflicts(doc) == ["torch/dequant/tiny: pass on h200-box, fail on mi350-box"]
    assert set(report.columns(doc)) == {"torch@h200-box", "torch@mi350-box"}
    assert main(["conformance", "merge", str(a), str(b)]) == 1
    assert "machines disagree" in capsys.readouterr().err


# -- the pytest plugin agrees ---------------------------------------------------------
def _plugin(pytester, *args):
    from test_conformance import _plugin_args

    pytester.makepyfile("def test_own():\n    assert True\n")
    return pytester.runpytest_inprocess(*_plugin_args(), *args, "-q", "-p", "no:cacheprovider")


@pytest.mark.parametrize("module, fragment", [
    ("not_there", "no module of that name"),
    ("misspelled_ops", "hook 'OPS': expected dict[str, Callable] (required), got nothing: not defined (found 'OPs': a misspelling?)"),
    ("import_error", "ImportError: cannot import name 'no_such_kernel'"),
    ("available_raises", "available() raised RuntimeError"),
    ("unavailable", "unavailable here: no Frobnicator device"),
])
def test_pytest_plugin_refuses_to_check_nothing(pytester, module, fragment):
    res = _plugin(pytester, "--dsport-backend-module", P + module, "--dsport-ops", "dequant")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert fragment in " ".join(res.stderr.str().split())


def test_pytest_plugin_unknown_case_and_allow_skip(pytester):
    res = _plugin(pytester, "--dsport-backend-module", P + "unavailable", "--dsport-ops", "dequant", "--dsport-cases", "tiyn")
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "did you mean 'tiny'?" in res.stderr.str()
    res = _plugin(pytester, "--dsport-backend-module", P + "unavailable", "--dsport-ops", "dequant", "--dsport-allow-skip")
    res.assert_outcomes(passed=1, skipped=5)


# -- the YAML config -------------------------------------------------------------------
@pytest.mark.parametrize("text, fragment", [
    ("", "empty document"),
    ("# only a comment\n", "empty document"),
    ("0\n", "expected a mapping of settings"),
    ("false\n", "expected a mapping of settings"),
    ("[]\n", "expected a mapping of settings"),
    ("backend: torch\nbackend: triton\n", "key 'backend' is given twice"),
    ("fp8: {format: e4m3fn, format: e4m3fnuz}\n", "key 'format' is given twice"),
    ("arch: sm_999\n", "arch: unknown name 'sm_999'"),
    ("device: cuda\n", "'cuda' is not present here"),
])
def test_yaml_documents_that_would_silently_mean_something_else(tmp_path, text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert fragment in str(e.value) and ("c.yaml" in str(e.value) or "arch" in fragment)


def test_binary_yaml_is_a_named_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    with pytest.raises(ConfigError, match=r"c.yaml.*not a text file"):
        load_config(p, env={})


def test_absent_device_says_how_to_allow_it_and_then_is_allowed(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(ConfigError, match="allow_absent_device: true"):
        from_mapping({"device": "cuda:0"})
    assert from_mapping({"device": "cuda:0", "allow_absent_device": True}).device == "cuda:0"
    p = tmp_path / "build.yaml"
    p.write_text("backend: torch\ndevice: cuda\nallow_absent_device: true\narch: sm_90a\n")
    assert load_config(p, env={}).arch == "sm_90a"
    with pytest.raises(ConfigError, match="allow_absent_device: expected true or false"):
        from_mapping({"allow_absent_device": "yes"})
    assert from_mapping({"device": "cpu"}).device == "cpu"


def test_pytest_plugin_session_whose_every_case_is_unsupported_is_not_green(pytester):
    # quick_tagged serves act_quant and dequant only: its rms_norm cases are all unsupported
    res = _plugin(pytester, "--dsport-backend-module", P + "quick_tagged", "--dsport-ops", "rms_norm", "--dsport-cases", "tiny")
    assert res.ret == pytest.ExitCode.USAGE_ERROR and "nothing checked: all 1 conformance case(s)" in res.stdout.str()
    res = _plugin(pytester, "--dsport-backend-module", P + "quick_tagged", "--dsport-ops", "rms_norm", "--dsport-cases", "tiny",
                  "--dsport-allow-skip")
    assert res.ret == pytest.ExitCode.OK


def test_profile_of_a_named_backend_that_timed_nothing_is_not_green(capsys):
    # quick_tagged has no rms_norm: its rows are unsupported, nothing of it was measured
    rc = main(["profile", "--backend", "torch", "--backend-module", "q=conformance_planted.quick_tagged", "--ops", "rms_norm",
               "--no-cost"])
    assert rc == 2 and "q: no op was timed" in " ".join(capsys.readouterr().err.split())
