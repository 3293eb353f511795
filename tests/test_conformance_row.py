"""The typed result row: every kind of row survives JSON and the report
schema unchanged, its fields are the schema's, and a report written before
the optional keys existed still loads and merges."""
import dataclasses
import json

import pytest

from dsport.backends import reference
from dsport.conformance import report, schema
from dsport.conformance.merge import merge
from dsport.conformance.row import OPTIONAL, Item, ResultRow
from dsport.conformance.worker import run_case
from dsport.core.backend import from_module
from dsport.core.build import KernelBuild
from dsport.core.errors import ConfigError


def _rows() -> dict[str, ResultRow]:
    judged = run_case(from_module(reference), dict(reference.OPS), "dequant", "tiny", is_reference=True)
    kb = KernelBuild("cuda", "k", ("act_quant", "dequant"), "sm_90a", "built", registers=40).to_json()
    return {
        "judged": judged.placed("reference"),
        "module": judged.placed("mine", "pkg.mine"),
        "build": ResultRow.build(kb, seconds=0.5).placed("cuda"),
        "crash": ResultRow.lost(Item("dequant", "tiny", 7), "crash", "worker killed by SIGSEGV", 0.1).placed("torch"),
        "timeout": ResultRow.lost(Item("dequant", "tiny", 7), "timeout", "no result within 4 s; worker killed", 4.0).placed("torch"),
        "skip": ResultRow.lost(Item("dequant", "tiny", 7), "skip", "backend unavailable: no device").placed("npu"),
        "model": ResultRow.model("torch", "v32-fp8/prefill-128+decode-16", "pass", "every op call within tolerance",
                                 {"precision": "float32", "logits_cosine_median": 0.99999}, 3.0,
                                 ["dsport", "conformance", "--model", "--backends", "torch"]),
    }


ROWS = _rows()


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_every_row_kind_round_trips_through_json(kind):
    row = ROWS[kind]
    wire = json.loads(json.dumps(row.to_json(), allow_nan=False))
    assert ResultRow.from_json(wire) == row
    assert ResultRow.from_json(wire).to_json() == wire


@pytest.mark.parametrize("kind", sorted(ROWS))
def test_every_row_kind_is_a_valid_report_row(kind):
    doc = report.build_document([ROWS[kind]], {}, "test", "quick")
    assert schema.errors(doc) == []
    (written,) = doc["results"]
    assert ResultRow.from_json(written) == dataclasses.replace(ROWS[kind], machine=written["machine"])


def test_row_kinds_carry_what_each_needs():
    assert ROWS["judged"].seed is not None and ROWS["judged"].tags and ROWS["judged"].metric == "exact"
    assert ROWS["judged"].reproduce == "dsport conformance --backends reference --ops dequant --cases tiny"
    assert ROWS["module"].reproduce == "dsport conformance --backend-module pkg.mine --ops dequant --cases tiny"
    # a crash row keeps the seed the job carried: the case is reproducible although it never reported
    assert ROWS["crash"].seed == 7 and ROWS["crash"].verdict == "crash"
    b = ROWS["build"]
    assert (b.op, b.ops, b.case, b.verdict, b.metrics["registers"]) == ("act_quant", ["act_quant", "dequant"], "sm_90a:k", "built", 40)
    assert b.reproduce == "dsport conformance --backends cuda --build --targets sm_90a"
    assert "ops" not in ROWS["judged"].to_json() and "source" not in ROWS["judged"].to_json()
    m = ROWS["model"]
    assert (m.op, m.metric, m.dtype, m.tags) == ("(model)", "model", "float32", ["model"])


def test_fields_are_the_schema_fields():
    item = schema.schema()["properties"]["results"]["items"]
    fields = set(ResultRow.__dataclass_fields__)
    assert fields == set(item["properties"])
    # a report requires every key but those only some rows have; 'machine' is set when the report is written
    assert set(item["properties"]) - set(item["required"]) == set(OPTIONAL) - {"machine"}
    assert set(item["required"]) == (fields - set(OPTIONAL)) | {"machine"}


def _old_report() -> dict:
    # as written before 'ops', 'source' and the 'contract' verdict existed
    row = {"backend": "torch", "machine": "box-a", "op": "dequant", "case": "tiny", "tags": ["quick", "tiny"], "seed": 3,
           "metric": "exact", "shapes": {"x": [4, 8]}, "dtypes": {"x": "float8_e4m3fn"}, "params": {}, "dtype": "bfloat16",
           "fp8_format": "e4m3fn", "verdict": "pass", "reason": "", "metrics": {"mismatches": 0}, "tolerance": {"exact": True},
           "seconds": 0.01, "reproduce": "dsport conformance --backends torch --ops dequant --cases tiny"}
    env = {"machine": "box-a", "hostname": "box-a", "platform": "Linux", "python": "3.11", "cpu_count": 2,
           "device": {"kind": "cpu", "name": "x86_64", "count": 0}, "packages": {"dsport": "0.1.0", "torch": "2.5"},
           "backends": {"torch": {"available": True, "reason": "", "ops": 20}}}
    counts = {"pass": 1, "fail": 0, "built": 0, "skip": 0, "unsupported": 0, "crash": 0, "timeout": 0}
    return {"schema": "dsport-conformance", "schema_version": 1, "created": "2026-11-01T00:00:00+00:00", "command": "dsport conformance",
            "case_set": "quick", "environments": [env], "results": [row], "summary": {"counts": counts, "ok": True}}


def test_an_old_report_without_the_newer_optional_keys_loads_and_merges():
    old = _old_report()
    assert schema.errors(old) == []
    row = ResultRow.from_json(old["results"][0])
    assert row.ops is None and row.source is None and row.to_json() == old["results"][0]
    new = report.build_document([ROWS["build"]], {}, "test", "quick")
    merged = merge([old, new], ["old.json", "new.json"])
    assert schema.errors(merged) == []
    assert old["results"][0] in merged["results"] and len(merged["results"]) == 2


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['verdicts'\]"):
        ResultRow.from_json({**ROWS["crash"].to_json(), "verdicts": "pass"})
