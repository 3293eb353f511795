"""`dsport conformance --model` covers what serving runs: decode through the
FP8 latent cache and the paged indexer, a prompt 4x index_topk so selection is
sparse, a dense V3 config, the grouped-GEMM MoE path; it honours
--backend-module, leaves no temporary checkpoint behind, and names the
planted model bugs (tests/conformance_planted/planted_model.py)."""
import json
import tempfile

import pytest
import torch

from dsport.core.cli import main

PLANTED = "conformance_planted.planted_model"


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    old = tempfile.tempdir
    tempfile.tempdir = str(tmp)  # where the run's temporary checkpoints go: it must leave none behind
    try:
        out = tmp / "model.json"
        rc = main(["conformance", "--model", "--backend-module", PLANTED, "--json", str(out), "--no-progress"])
    finally:
        tempfile.tempdir = old
    left = sorted(p.name for p in tmp.iterdir() if p.name != "model.json")
    return rc, {r["case"].split("/")[0]: r for r in json.loads(out.read_text())["results"]}, left


def test_planted_model_bugs_are_named_by_phase_and_op(planted_run):
    rc, rows, _ = planted_run
    row = rows["v32-fp8"]
    assert rc == 1 and row["verdict"] == "fail" and row["backend"] == "planted_model"
    # each bug is judged on its own inputs: the top-k one in prefill, the FP8-cache one in decode
    assert row["metrics"]["first_failure"]["op"] == "topk_select" and row["metrics"]["first_failure"]["phase"] == "prefill"
    assert {"prefill: topk_select", "decode: sparse_mla_decode"} <= set(row["metrics"]["failed"]), row["metrics"]["failed"]
    assert "--backend-module conformance_planted.planted_model" in row["reproduce"]


def test_the_model_cases_exercise_the_serving_paths(planted_run):
    _, rows, left = planted_run
    v32, dense = rows["v32-fp8"]["metrics"], rows["v3-dense-grouped"]["metrics"]
    assert {"mla_cache_pack", "sparse_mla_decode", "index_cache_pack", "indexer_logits_paged", "topk_select"} <= set(v32["ops_used"])
    assert v32["prompt_len"] >= 4 * 32 and v32["options"] == {"kv_cache": "fp8"}
    assert {"mla_decode_dense", "moe_grouped_gemm_contiguous"} <= set(dense["ops_used"]) and "indexer_logits" not in dense["ops_used"]
    # the dense case runs neither planted op, so it passes: the bugs alone turn the other case red
    assert rows["v3-dense-grouped"]["verdict"] == "pass"
    assert left == [], f"temporary files left behind: {left}"


def test_the_old_model_check_could_not_see_the_topk_bug(tmp_path, monkeypatch):
    """The control: a prompt shorter than index_topk (as the model check used to run) selects
    every key, so the planted top-k bug passes; only the sparse prompt above catches it."""
    from dsport.conformance.model import module_table
    from dsport.core.model import tiny_config
    from dsport.core.model.compare import compare
    from dsport.core.model.weights import make_checkpoint

    import conformance_planted.planted_model as planted

    monkeypatch.setattr(planted, "BUGS", {"topk_select"})
    ckpt = make_checkpoint(tmp_path / "c", tiny_config(n_layers=2), seed=1)  # index_topk 64
    tokens = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(0))
    rep = compare(ckpt, module_table(planted, "planted_model", torch.float32), tokens)
    assert rep.verdict == "pass" and "topk_select" in rep.ops_used


@pytest.mark.parametrize("module, rc, fragment", [
    ("conformance_planted.unavailable", 2, "named explicitly but not checked"),
    ("conformance_planted.not_there", 2, "no module of that name"),
])
def test_model_with_a_module_that_checks_nothing_is_loud(module, rc, fragment, capsys):
    got = main(["conformance", "--model", "--backend-module", module, "--no-progress"])
    assert got == rc and fragment in " ".join(capsys.readouterr().err.split())
