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
def planted_rows():
    from dsport.conformance.model import model_rows

    # both bugs on at once: each is judged on its own inputs, so both are named
    return {r["case"].split("/")[0]: r for r in model_rows([], None, modules=[PLANTED], only=["v32-fp8"])}


def test_planted_model_bugs_are_named_by_phase_and_op(planted_rows):
    row = planted_rows["v32-fp8"]
    assert row["verdict"] == "fail" and row["backend"] == "planted_model"
    # the top-k bug in prefill (the first failure), the FP8-cache one at the first decode step
    assert row["metrics"]["first_failure"]["op"] == "topk_select" and row["metrics"]["first_failure"]["phase"] == "prefill"
    assert {"prefill: topk_select", "decode: sparse_mla_decode"} <= set(row["metrics"]["failed"]), row["metrics"]["failed"]
    assert "--backend-module conformance_planted.planted_model" in row["reproduce"]


def test_the_v32_case_runs_the_fp8_caches_with_sparse_selection(planted_rows):
    v32 = planted_rows["v32-fp8"]["metrics"]
    assert {"mla_cache_pack", "sparse_mla_decode", "index_cache_pack", "indexer_logits_paged", "topk_select"} <= set(v32["ops_used"])
    assert v32["prompt_len"] >= 4 * 32 and v32["options"] == {"kv_cache": "fp8"}


def test_dense_grouped_case_runs_the_grouped_gemms_and_dense_decode(tmp_path):
    """The v3-dense-grouped case's graph, in process: grouped-GEMM MoE gives the
    moe_experts result, and decode goes through mla_decode_dense."""
    from dsport.conformance.model import scenarios
    from dsport.core.model import Model, tiny_config
    from dsport.conformance.model_compare import compare
    from dsport.core.model.weights import make_checkpoint

    s = next(s for s in scenarios() if s.name == "v3-dense-grouped")
    ckpt = make_checkpoint(tmp_path / "d", tiny_config(**{**s.config, "n_layers": 2}), seed=1)
    tokens = torch.randint(0, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    grouped = Model.from_pretrained(ckpt, backend="reference", moe="grouped")(tokens)
    torch.testing.assert_close(grouped, Model.from_pretrained(ckpt, backend="reference")(tokens), rtol=1e-5, atol=1e-6)  # float64 inside, float32 logits out
    rep = compare(ckpt, "torch", tokens, decode_steps=2, **s.options)
    assert rep.verdict == "pass" and {"mla_decode_dense", "moe_grouped_gemm_contiguous"} <= set(rep.ops_used)
    assert "indexer_logits" not in rep.ops_used and "moe_experts" not in rep.ops_used


def test_the_old_model_check_could_not_see_the_topk_bug(tmp_path, monkeypatch):
    """The control: a prompt shorter than index_topk (as the model check used to run) selects
    every key, so the planted top-k bug passes; only the sparse prompt above catches it."""
    from dsport.conformance.model import module_table
    from dsport.core.backend import from_module
    from dsport.core.model import tiny_config
    from dsport.conformance.model_compare import compare
    from dsport.core.model.weights import make_checkpoint

    import conformance_planted.planted_model as planted

    monkeypatch.setattr(planted, "BUGS", {"topk_select"})
    ckpt = make_checkpoint(tmp_path / "c", tiny_config(n_layers=1), seed=1)  # index_topk 64
    tokens = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(0))
    rep = compare(ckpt, module_table(from_module(planted), "planted_model", torch.float32), tokens)
    assert rep.verdict == "pass" and "topk_select" in rep.ops_used


def test_model_with_an_unavailable_module_is_loud_and_leaves_no_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's temporary checkpoints go
    out = tmp_path / "model.json"
    got = main(["conformance", "--model", "--backend-module", "conformance_planted.unavailable", "--json", str(out), "--no-progress"])
    assert got == 2 and "named explicitly but not checked" in " ".join(capsys.readouterr().err.split())
    rows = json.loads(out.read_text())["results"]
    assert [r["case"].split("/")[0] for r in rows] == ["v32-fp8", "v3-dense-grouped"] and {r["verdict"] for r in rows} == {"skip"}
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "model.json")
    assert left == [], f"temporary files left behind: {left}"
    assert main(["conformance", "--model", "--backend-module", "conformance_planted.not_there", "--no-progress"]) == 2
    assert "no module of that name" in " ".join(capsys.readouterr().err.split())
    assert main(["conformance", "--model", "--backends", "torch", "--prompt", "0", "--no-progress"]) == 2
