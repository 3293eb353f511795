"""dsport profile: the report validates against its schema (and the schema
check can fail), a deliberately wrong implementation gets no speed figure,
--compare gives ratios only where both pass, reports merge; timing, roofline
and cost-model arithmetic against hand-computed values."""
import copy
import json
import time

import pytest
import torch

from dsport.core.cli import main
from dsport.core.constants import DEEPSEEK_V32 as V
from dsport.core.profile import cost, hardware, report
from dsport.core.profile.hardware import Roofline
from dsport.core.profile.roofline import place, roofline_time
from dsport.core.profile.shapes import CPU, profile_cases
from dsport.core.profile.timing import time_call

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_cli(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    out = {k: str(d / n) for k, n in (("json", "p.json"), ("md", "p.md"), ("png", "roof.png"))}
    rc = main(["profile", "--backend", "torch", "--backend-module", "wrong=profile_wrong_backend", "--ops", "rms_norm,topk_select,hadamard",
               "--warmup", "0", "--repeats", "3", "--budget", "0.05", "--contexts", "8192,131072",
               "--json", out["json"], "--markdown", out["md"], "--plot", out["png"]])
    with open(out["json"]) as f:
        return rc, json.load(f), out, d


def test_report_is_valid_and_complete(run_cli):
    rc, doc, out, _ = run_cli
    assert rc == 1, "a failing case must make the run exit non-zero"
    assert report.errors(doc) == []
    assert doc["schema"] == "dsport-profile" and doc["schema_version"] == 1
    keys = {(r["backend"], r["op"], r["phase"]) for r in doc["results"]}
    assert keys == {(b, o, p) for b in ("torch", "wrong") for o in ("rms_norm", "topk_select", "hadamard") for p in ("prefill", "decode")}
    env = doc["environments"][0]
    assert env["roofline"]["origin"] == "measured" and env["roofline"]["bandwidth"] > 0
    assert "matmul" in env["roofline"]["note"] and "copy" in env["roofline"]["note"]


def test_wrong_implementation_gets_no_speed_figure(run_cli):
    _, doc, out, _ = run_cli
    rows = {(r["backend"], r["op"], r["phase"]): r for r in doc["results"]}
    for phase in ("prefill", "decode"):
        bad = rows[("wrong", "rms_norm", phase)]
        assert bad["accuracy"]["verdict"] == "fail" and bad["accuracy"]["reason"]
        assert bad["timing"] is None and bad["perf"] is None and bad["flops"] is None
        for ok in (rows[("torch", "rms_norm", phase)], rows[("wrong", "topk_select", phase)]):
            assert ok["accuracy"]["verdict"] == "pass"
            t = ok["timing"]
            assert t["repeats"] >= 3 and t["min_s"] <= t["median_s"] <= t["max_s"] and t["clock"] == "perf_counter"
            assert ok["perf"]["roofline_share"] > 0 and ok["flops"] > 0
    late = rows[("wrong", "hadamard", "prefill")]  # right at the check shape, NaN at the profiled one
    assert late["accuracy"]["verdict"] == "fail" and "at the profiled shape" in late["accuracy"]["reason"] and "NaN" in late["accuracy"]["reason"]
    assert late["timing"] is None and late["perf"] is None
    assert rows[("wrong", "hadamard", "decode")]["timing"] is not None
    assert rows[("torch", "hadamard", "prefill")]["timing"]["warmup"] == 1  # the structure-checked call counts as warm-up
    md = open(out["md"]).read()
    fail_lines = [ln for ln in md.splitlines() if ln.startswith("| rms_norm") and "| wrong |" in ln]
    assert len(fail_lines) == 2 and all("| fail |" in ln and " us" not in ln and " ms" not in ln for ln in fail_lines)


def test_schema_check_can_fail(run_cli):
    _, doc, _, _ = run_cli
    bad = copy.deepcopy(doc)
    i = next(i for i, r in enumerate(bad["results"]) if r["accuracy"]["verdict"] == "fail")
    ok = next(r for r in bad["results"] if r["timing"])
    bad["results"][i]["timing"], bad["results"][i]["perf"] = ok["timing"], ok["perf"]
    assert any("has a speed figure" in e for e in report.errors(bad))
    bad = copy.deepcopy(doc)
    del bad["results"][0]["accuracy"]
    assert any("missing required 'accuracy'" in e for e in report.errors(bad))
    bad = copy.deepcopy(doc)
    bad["results"][0]["phase"] = "training"
    assert report.errors(bad)


def test_pngs_written(run_cli):
    _, _, out, d = run_cli
    for name in ("roof.png", "roof_layer.png", "roof_cost.png"):
        data = (d / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000, name


def test_compare_only_where_both_pass(run_cli):
    _, doc, _, _ = run_cli
    res = {(c["op"], c["case"]): c for c in report.compare(doc, "torch", "wrong")}
    for phase in ("prefill", "decode"):
        assert res[("rms_norm", f"{phase}-cpu")]["ratio"] is None and "fail" in res[("rms_norm", f"{phase}-cpu")]["why"]
        c = res[("topk_select", f"{phase}-cpu")]
        assert c["ratio"] == pytest.approx(c["b_s"] / c["a_s"])


def test_merge_keeps_machines_apart(run_cli):
    _, doc, _, _ = run_cli
    other = copy.deepcopy(doc)
    other["environments"][0]["machine"] = "mi350-box"
    for r in other["results"]:
        r["machine"] = "mi350-box"
    merged = report.merge([doc, other], ["a.json", "b.json"])
    assert len(merged["results"]) == 2 * len(doc["results"]) and len(merged["environments"]) == 2
    again = report.merge([doc, doc], ["a.json", "a.json"])
    assert len(again["results"]) == len(doc["results"])
    bad = copy.deepcopy(doc)
    bad["schema_version"] = 2
    with pytest.raises(ValueError):
        report.merge([doc, bad])


# -- arithmetic, checked by hand ---------------------------------------------------------------------
ROOF = Roofline("test", {"bf16": 1e12, "fp8": 2e12}, 1e9, "table")


def test_roofline_time_and_share_by_hand():
    # 2 GFLOP at 1 TFLOP/s = 2 ms; 1 MB at 1 GB/s = 1 ms -> compute bound, 2 ms
    assert roofline_time(2e9, 1e6, ROOF, "bf16") == (pytest.approx(2e-3), "compute", False)
    # fp8 peak is twice as high: 1 ms compute vs 1 ms... make memory win: 4 MB -> 4 ms
    assert roofline_time(2e9, 4e6, ROOF, "fp8") == (pytest.approx(4e-3), "memory", False)
    p = place(2e9, 1e6, 4e-3, ROOF, "bf16")
    assert p["roofline_share"] == pytest.approx(0.5) and p["tflops"] == pytest.approx(0.5) and p["gbps"] == pytest.approx(0.25)
    assert p["intensity"] == pytest.approx(2000.0)
    unknown_bw = Roofline("npu", {"bf16": 1e12, "fp8": None}, None, "table")
    assert roofline_time(1e9, 1e9, unknown_bw, "bf16") == (pytest.approx(1e-3), "compute", True)


def test_timing_medians_and_cache_strategy():
    seen = []

    def fn(x):
        seen.append(x.data_ptr())
        time.sleep(0.01)

    x = torch.zeros(100_000)  # 400 kB
    t = time_call(fn, {"x": x}, warmup=1, repeats=4, min_repeats=4, budget_s=10, llc_bytes=1 << 20)
    assert len(t.times_s) == 4 and all(s >= 0.01 for s in t.times_s) and t.median_s < 0.5
    assert t.cache.startswith("rotated 6 input sets")  # ceil(2 MiB / 400 kB) = 6
    assert len(set(seen)) == 5  # 1 warm-up + 4 timed calls cycle through distinct copies
    assert time_call(fn, {"x": x}, 0, 3, 3, 10, llc_bytes=1000).cache.startswith("none needed")
    assert time_call(fn, {"x": torch.zeros(10)}, 0, 3, 3, 10, llc_bytes=1 << 20).cache.startswith("flushed")
    j = t.to_json()
    assert j["min_s"] <= j["median_s"] <= j["max_s"] and j["iqr_s"] >= 0


def test_hardware_table_has_a_source_for_every_number():
    tab = hardware.table()
    for name in ("H800", "H200", "MI300X", "MI350X", "Ascend-910B", "Ascend-910C"):
        d = tab[name]
        for k in hardware.REQUIRED:
            assert k in d and d["sources"][k].strip(), (name, k)
    assert tab["H200"]["bandwidth"] == 4.8e12 and tab["MI300X"]["fp8_format"] == "e4m3fnuz" and tab["MI350X"]["fp8_format"] == "e4m3fn"
    assert tab["H800"]["peak_fp8_flops"] == pytest.approx(2 * tab["H800"]["peak_bf16_flops"], rel=1e-3)  # FP8 rate = 2x BF16 on Hopper
    assert hardware.match("NVIDIA H200 NVL") == "H200" and hardware.match("AMD Instinct MI300X") == "MI300X"
    assert hardware.match("Ascend910B3") == "Ascend-910B"


def test_cost_model_by_hand():
    b, L = 4, 131072
    mb = L // 64
    args = {"q": torch.empty(b, 1, 128, 576, device="meta", dtype=torch.bfloat16),
            "kv_cache": torch.empty(b * mb, 64, 1, 656, device="meta", dtype=torch.uint8),
            "indices": torch.empty(b, 1, 2048, device="meta", dtype=torch.int32), "sm_scale": 0.1, "d_v": 512}
    flops, nbytes = cost.model_cost("sparse_mla_decode", args)
    assert flops == 2 * b * 2048 * 128 * (576 + 512)
    # bf16 q [b, 128, 576] and out [b, 128, 512]; per index one 656-byte cache row and a 4-byte int32; fp32 lse [b, 128]
    assert nbytes == 2 * b * 128 * (576 + 512) + b * 2048 * (656 + 4) + 4 * b * 128
    h200 = hardware.from_table("H200")
    tab = cost.cost_table(h200, {}, batch=b, contexts=[8192, 131072])
    short, long = tab["contexts"]
    # sparse attention reads k = 2048 rows whatever the context; dense attention and the indexer grow with L
    assert short["dsa"]["groups"]["attention"] == long["dsa"]["groups"]["attention"]
    assert long["dense"]["groups"]["attention"] / short["dense"]["groups"]["attention"] == pytest.approx(16, rel=0.01)
    assert long["dsa"]["groups"]["indexer logits O(L)"] / short["dsa"]["groups"]["indexer logits O(L)"] == pytest.approx(16, rel=0.01)
    assert long["dense"]["per_token_s"] / long["dsa"]["per_token_s"] > short["dense"]["per_token_s"] / short["dsa"]["per_token_s"]


def test_profile_cases_carry_deepseek_dims():
    cases = {(c.op, c.phase): c for c in profile_cases(CPU)}
    sp = cases[("sparse_mla_prefill", "prefill")].case.inputs()
    assert sp["q"].shape[1:] == (V.n_heads, V.d_qk) and sp["indices"].shape[-1] == V.index_topk
    ids = cases[("moe_experts", "decode")].case.inputs()["ids"]
    assert ids.shape[1] == V.n_activated_experts and int(ids.max()) < CPU.local_experts and int(ids.min()) >= -1
    chk = cases[("sparse_mla_prefill", "prefill")].check.inputs()
    assert chk["q"].shape[0] < sp["q"].shape[0] and chk["q"].shape[1:] == sp["q"].shape[1:]
    assert {p for (_, p) in cases} == {"prefill", "decode"}


def test_cli_compare_and_cost_only(run_cli, capsys, tmp_path):
    _, _, out, _ = run_cli
    capsys.readouterr()
    assert main(["profile", "--from-json", out["json"], "--compare", "torch", "wrong", "--no-cost"]) == 1
    text = capsys.readouterr().out
    assert "ratio only when both pass" in text and "x" in text
    p = tmp_path / "cost.json"
    assert main(["profile", "--cost-only", "--cost-hardware", "H200", "--contexts", "8192,65536", "--json", str(p)]) == 0
    c = json.loads(p.read_text())
    assert [e["context"] for e in c["contexts"]] == [8192, 65536] and c["roofline_origin"] == "table"
    assert all(call["efficiency"].startswith("roofline bound") for call in c["contexts"][0]["dsa"]["calls"])


def test_prefill_cost_shows_quadratic_dense_attention():
    """Whole-prompt prefill per token: dense causal attention averages ~L/2 keys per token (O(L^2) per
    prompt), sparse attention always k = 2048, so per-token dense grows 16x from 8K to 128K."""
    tab = cost.cost_table(hardware.from_table("MI300X"), {}, contexts=[8192, 131072], phase="prefill", chunk=4096)
    short, long = tab["contexts"]
    assert long["dsa"]["groups"]["attention"] == pytest.approx(short["dsa"]["groups"]["attention"])
    # causal pairs per token: (L + 1) / 2 -> (131072 + 1) / (8192 + 1)
    assert long["dense"]["groups"]["attention"] / short["dense"]["groups"]["attention"] == pytest.approx(131073 / 8193, rel=0.02)
